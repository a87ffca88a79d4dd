import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.protocol import MAX_BATCH, parse_v1, parse_v2


def test_valid_body_as_dict_or_raw_bytes():
    reqs = parse_v1({"instances": [{"user_id": "u1", "k": 3}, {"user_id": "u2"},
                                   {"session": {"recent_items": ["i1", "i2"]}, "context": {"page": "category:Books"}}]})
    assert [(r.user_id, r.k) for r in reqs] == [("u1", 3), ("u2", 10), (None, 10)]
    assert reqs[2].recent_items == ("i1", "i2") and reqs[2].page_category == "Books"
    assert parse_v1(b'{"instances": [{"user_id": "u1"}]}')[0].user_id == "u1"


@pytest.mark.parametrize("body, message", [
    (b"{bad", "body is not valid JSON"),
    (b"\xff\xfe", "body is not valid JSON"),
    ({"inputs": []}, 'body must be {"instances"'),
    ({"instances": []}, "instances is empty"),
    ({"instances": [{"user_id": "u", "k": 0}]}, "instances[0]: k: Input should be greater than or equal to 1"),
    ({"instances": [{"user_id": "u", "k": "ten"}]}, "instances[0]: k: Input should be a valid integer"),
    ({"instances": [{"user_id": "u", "k": True}]}, "instances[0]: k: Value error, k must be a whole number"),
    ({"instances": [{"user_id": "u"}, {"k": 5}]}, "instances[1]: instance: Value error, give user_id"),
    ({"instances": [{"user_id": "u", "colour": 1}]}, "instances[0]: colour: Extra inputs"),
    ({"instances": [{"user_id": "u", "context": {"device": "fridge"}}]}, "instances[0]: context.device"),
    ({"instances": [{"user_id": "u", "context": {"page": "checkout"}}]}, "instances[0]: context.page"),
    ({"instances": [{"user_id": "u" * 500}]}, "instances[0]: user_id"),
    ({"instances": ["u1"]}, "instances[0]"),
    ({"instances": [{"user_id": "u"}] * (MAX_BATCH + 1)}, f"at most {MAX_BATCH}"),
])
def test_bad_v1_bodies_name_the_problem(body, message):
    with pytest.raises(InvalidInput) as info:
        parse_v1(body)
    assert message in str(info.value)


def v2(*inputs):
    return InferRequest(model_name="recommender", infer_inputs=list(inputs))


def test_v2_tensors_become_requests():
    reqs = parse_v2(v2(InferInput("user_id", [3], "BYTES", ["u1", "", "u3"]),
                       InferInput("k", [1], "INT32", [4]),
                       InferInput("recent_items", [3], "BYTES", ["", "i1,i2", ""])))
    assert [(r.user_id, r.k) for r in reqs] == [("u1", 4), (None, 4), ("u3", 4)]
    assert reqs[1].recent_items == ("i1", "i2")


@pytest.mark.parametrize("inputs, message", [
    ([InferInput("k", [1], "INT32", [4])], 'input "user_id"'),
    ([InferInput("user_id", [1], "FP32", [1.0])], "input user_id: datatype must be BYTES"),
    ([InferInput("user_id", [2], "BYTES", ["u1"])], "shape [2] does not match 1 values"),
    ([InferInput("user_id", [2], "BYTES", ["u1", "u2"]), InferInput("k", [3], "INT32", [1, 2, 3])],
     "input k: 3 values for 2 requests"),
    ([InferInput("user_id", [1], "BYTES", ["u1"]), InferInput("colour", [1], "BYTES", ["red"])], "unknown inputs"),
    ([InferInput("user_id", [1], "BYTES", [""])], "inputs[0]: instance: Value error, give user_id"),
])
def test_bad_v2_tensors_name_the_problem(inputs, message):
    with pytest.raises(InvalidInput) as info:
        parse_v2(v2(*inputs))
    assert message in str(info.value)
