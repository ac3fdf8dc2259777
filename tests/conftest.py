pytest_plugins = ["homeskillet.testing"]
