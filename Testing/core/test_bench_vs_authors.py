"""benchmarks/bench_vs_authors.py: argument handling and the check of --authors-dir
(the benchmark itself needs the authors' code, which is not in this repository)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_vs_authors")


def test_authors_dir_is_required(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args([])
    assert exc.value.code == 2 and "--authors-dir" in capsys.readouterr().err


def test_refuses_a_folder_without_their_files_naming_them(bench, tmp_path, capsys):
    (tmp_path / "UA-MT" / "code" / "networks").mkdir(parents=True)
    (tmp_path / "UA-MT" / "code" / "networks" / "vnet.py").write_text("")
    assert bench.main(["--authors-dir", str(tmp_path), "--methods", "uamt", "ucmt"]) == 2
    err = capsys.readouterr().err
    assert (f"--authors-dir {tmp_path}: missing UA-MT/code/utils/losses.py, "
            "UA-MT/code/train_LA_meanteacher_certainty_unlabel.py, UCMT/models/vnet.py") in err
    assert "UA-MT/code/networks/vnet.py" not in err.split("missing")[1].split(";")[0]
    assert "git clone https://github.com/yulequan/UA-MT" in err


def test_required_files_follow_the_parts_asked_for(bench, tmp_path):
    args = bench.parse_args(["--authors-dir", str(tmp_path), "--inference-only"])
    assert bench.parts_of(args) == ["inference"]
    assert bench.missing_files(tmp_path, ["inference"]) == ["UA-MT/code/networks/vnet.py", "UA-MT/code/test_util.py"]
    for rel in bench.REQUIRED_FILES["ucmt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert bench.missing_files(tmp_path, ["ucmt"]) == []
    with pytest.raises(SystemExit):
        bench.parse_args(["--authors-dir", str(tmp_path), "--reps", "0"])


def test_their_ucmt_keys_map_onto_the_library_vnet(bench):
    state = {"net.encoder.block_one.conv.0.weight": 1, "net.classifier.out_conv.bias": 2}
    assert bench.ucmt_state_for_library(state) == {"block_one.conv.0.weight": 1, "out_conv.bias": 2}


def test_script_block_reads_their_loop_body_by_its_statements(bench, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import x\nfor i in y:\n    a = 1\n    opt.step()\n    b = 2\n    opt.step()\n    c = 3\n")
    code, first, last = bench.script_block(script, "a = 1", "opt.step()", 2)
    assert (first, last) == (3, 6)
    assert code == "\n\na = 1\nopt.step()\nb = 2\nopt.step()"  # blank lines keep their line numbers
    with pytest.raises(SystemExit, match="different version of their script"):
        bench.script_block(script, "a = 1", "opt.step()", 3)
