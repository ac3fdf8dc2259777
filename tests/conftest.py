from hypothesis import HealthCheck, settings

pytest_plugins = ["homeskillet.testing"]

# Property tests assert properties, never speed: a loaded CI machine must not fail them on a
# per-example deadline or the too-slow health check.
settings.register_profile("homeskillet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("homeskillet")
