import pytest

from telegraphy import InvalidInput
from telegraphy.uri import check_topic, is_valid_prefix, is_valid_topic


@pytest.mark.parametrize("topic", ["com.myapp.topic1", "com.myApp.topic-1", "a", "x.\u00e9t\u00e9.*", "a.b\x1cc"])
def test_valid_topics(topic):
    assert is_valid_topic(topic)


@pytest.mark.parametrize("topic", ["", "com.my app", "com.my#app", "com..app", ".com", "com.", "a.b\u00a0c", "a\tb"])
def test_invalid_topics(topic):
    assert not is_valid_topic(topic)
    with pytest.raises(InvalidInput, match="not a valid topic URI"):
        check_topic(topic)


def test_wamp_topics_are_reserved():
    with pytest.raises(InvalidInput, match="reserved"):
        check_topic("wamp.session.on_join")
    check_topic("wampum.x")


def test_prefixes():
    assert is_valid_prefix("com.myapp.") and is_valid_prefix("com.myapp")
    assert not is_valid_prefix(".") and not is_valid_prefix("com..myapp")
