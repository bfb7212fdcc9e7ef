"""The ONNX node suite through sparsec's import -> IR -> export round trip, on ONNX Runtime.

Every case in the checked-in pass list must still pass; regenerate the list with
``python tests/onnx_node_cases.py --update`` when sparsec gains cases.
"""

import json

import pytest

from onnx_node_cases import ROUNDTRIP_LIST, SUMMARY, TVM_LIST, cases, roundtrip, through_tvm

LISTED = ROUNDTRIP_LIST.read_text().split()


def test_list_and_summary_agree():
    summary = json.loads(SUMMARY.read_text())
    assert len(LISTED) == summary["roundtrip_pass"] > 1000
    assert summary["total"] == len(cases())


@pytest.mark.parametrize("name", LISTED)
def test_roundtrip(name):
    ok, why = roundtrip(cases()[name])
    assert ok, why


TVM_LISTED = TVM_LIST.read_text().split() if TVM_LIST.exists() else []


def test_tvm_list_and_summary_agree():
    assert len(TVM_LISTED) == json.loads(SUMMARY.read_text())["tvm_pass"] > 500


@pytest.mark.parametrize("name", TVM_LISTED)
def test_through_tvm(name):
    ok, why = through_tvm(cases()[name])
    assert ok, why
