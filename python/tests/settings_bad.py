from tests.settings import *  # noqa: F401,F403

TELEGRAPHY = {"SECRET": "too short", "API_KEY": "test-api-key-123"}
