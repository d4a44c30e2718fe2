import argparse

import pytest

from utils.cli import add_bool, make_parser, optional_str, str2bool


@pytest.mark.parametrize("v,expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                        ("True", True), ("1", True), ("yes", True), ("ON", True)])
def test_str2bool(v, expected):
    assert str2bool(v) is expected


def test_str2bool_rejects_garbage():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("Flase")


def test_bool_flag_forms():
    p = make_parser("t")
    add_bool(p, "use_8bit", True, "x")
    assert p.parse_args(["--use_8bit=False"]).use_8bit is False
    assert p.parse_args(["--use_8bit", "false"]).use_8bit is False
    assert p.parse_args(["--use_8bit"]).use_8bit is True
    assert p.parse_args([]).use_8bit is True
    with pytest.raises(SystemExit):
        p.parse_args(["--use_8bit=maybe"])


def test_optional_str():
    assert optional_str("None") is None and optional_str("chinese") == "chinese"
