import json

import pytest

from utils.io import atomic_open, write_json_atomic, write_jsonlines_atomic


def test_jsonlines_roundtrip(tmp_path):
    p = tmp_path / "sub" / "m.json"
    assert write_jsonlines_atomic(p, [{"sentence": "你好"}, {"sentence": ""}]) == 2
    lines = p.read_text(encoding="utf-8").splitlines()
    assert [json.loads(l)["sentence"] for l in lines] == ["你好", ""]
    assert "你好" in lines[0]  # not \u escapes


def test_crash_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "r.json"
    write_json_atomic(p, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]
