import pytest
from kserve.errors import InvalidInput

from serving.protocol import parse_instances


def test_valid_body_as_dict_or_raw_bytes():
    reqs = parse_instances({"instances": [{"user_id": "u1", "k": 3}, {"user_id": "u2"}]})
    assert [(r.user_id, r.k) for r in reqs] == [("u1", 3), ("u2", 10)]
    assert parse_instances(b'{"instances": [{"user_id": "u1"}]}')[0].user_id == "u1"


@pytest.mark.parametrize("body, message", [
    (b"{bad", "body is not valid JSON"),
    (b"\xff\xfe", "body is not valid JSON"),
    ({"inputs": []}, 'body must be {"instances"'),
    ({"instances": []}, "instances is empty"),
    ({"instances": [{"user_id": "u", "k": 0}]}, "instances[0]: k: Input should be greater than or equal to 1"),
    ({"instances": [{"user_id": "u"}, {"k": 5}]}, "instances[1]: user_id: Field required"),
    ({"instances": [{"user_id": "u", "colour": 1}]}, "instances[0]: colour: Extra inputs"),
    ({"instances": ["u1"]}, "instances[0]"),
])
def test_bad_bodies_name_the_problem(body, message):
    with pytest.raises(InvalidInput) as info:
        parse_instances(body)
    assert message in str(info.value)
