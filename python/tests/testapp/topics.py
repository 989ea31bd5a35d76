"""The TOPICS_FOR hook of the tests: a per-user topic, and one for users
whose name starts with "vip"."""


def topics_for(user):
    if not user.is_authenticated:
        return []
    topics = [f"tests.users.{user.pk}.*"]
    if user.username.startswith("vip"):
        topics.append("tests.vip")
    return topics


def bad_topics_for(user):
    return ["tests.*.x"]
