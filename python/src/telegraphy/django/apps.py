from django.apps import AppConfig


class TelegraphyConfig(AppConfig):
    name = "telegraphy.django"
    label = "telegraphy"
    verbose_name = "Telegraphy"

    def ready(self):
        from django.core import checks
        from django.core.signals import setting_changed
        from django.utils.module_loading import autodiscover_modules

        from . import checks as telegraphy_checks
        from .model_events import registry

        autodiscover_modules("events")
        autodiscover_modules("procedures")
        registry.connect()
        checks.register(telegraphy_checks.check_settings, "telegraphy")
        checks.register(telegraphy_checks.check_events, "telegraphy")
        checks.register(telegraphy_checks.check_templates, "telegraphy")
        checks.register(telegraphy_checks.check_procedures, "telegraphy")
        setting_changed.connect(_settings_changed, dispatch_uid="telegraphy.django.setting_changed")


def _settings_changed(setting, **kwargs):
    if setting == "TELEGRAPHY":
        from ..client import set_publisher

        set_publisher(None)
