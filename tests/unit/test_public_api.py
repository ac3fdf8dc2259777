import importlib
import pkgutil

import homeskillet

CORE = ["wire", "errors", "covenant", "scoring", "analyze", "fuse", "bridge", "strict", "subjects", "ledger",
        "pools", "broker", "strike", "worker", "orchestrator", "gateway", "runtime", "natsd", "config", "testing"]


def test_every_core_module_declares_a_complete_all():
    for name in CORE:
        mod = importlib.import_module(f"homeskillet.{name}")
        declared = set(mod.__all__)
        public = {n for n, v in vars(mod).items() if not n.startswith("_") and getattr(v, "__module__", None)
                  == mod.__name__ and callable(v)}
        assert public <= declared, f"homeskillet.{name} does not export {sorted(public - declared)}"
        assert all(hasattr(mod, n) for n in declared)


def test_every_module_imports():
    for info in pkgutil.walk_packages(homeskillet.__path__, "homeskillet."):
        importlib.import_module(info.name)
