"""Entry-point loader for harnesses that have no plug-in mechanism of their own.

vidore-benchmark and mteb both keep a module-level registry (``VISION_RETRIEVER_REGISTRY`` in
``vidore_benchmark.retrievers.registry_utils``, ``MODEL_REGISTRY`` in
``mteb.models.model_implementations``) but never look at entry points. A one-line ``.pth`` file
(``moca_plugins_hook.pth``, installed at the root of site-packages) calls :func:`install` at every
interpreter start. That puts a meta-path finder in front of the import system which watches for
exactly the registry modules below; when one of them finishes executing, every entry point of the
matching group is loaded and added to the registry. Any distribution can use the groups, not only
this one.

Constraints, because this runs in every Python process of the environment:
- standard library only, and nothing is imported at start-up beyond ``sys``;
- a broken plug-in logs a warning and never breaks the harness;
- :func:`install` is idempotent.

Circular imports: when a plug-in's own module is imported first (``from moca_bench.mteb_models import
...`` before ``import mteb``), it imports the harness, whose registry then loads the entry point while
that module is still half-initialised. Such an entry point is kept pending instead of failing; the
module calls :func:`retry_pending` at its end, once its names exist.
"""

import sys

# registry module -> (entry-point group, how to add an object to the registry)
_TARGETS = {
    "vidore_benchmark.retrievers": "vidore_benchmark.retrievers",
    "mteb.models.model_implementations": "mteb.models",
}
_loaded: set = set()
_pending: list = []  # (group, entry point) whose load met a module still being imported


def _register_vidore(name, obj):
    registry = sys.modules["vidore_benchmark.retrievers.registry_utils"].VISION_RETRIEVER_REGISTRY
    if isinstance(obj, type):
        registry[name] = obj


def _register_mteb(name, obj):
    registry = sys.modules["mteb.models.model_implementations"].MODEL_REGISTRY
    metas = obj() if callable(obj) and not hasattr(obj, "name") else obj
    if hasattr(metas, "name"):
        metas = [metas]
    for meta in metas:
        # Plain assignment on purpose: a plug-in may replace a built-in entry of the same name.
        registry[meta.name] = meta


_REGISTER = {"vidore_benchmark.retrievers": _register_vidore, "mteb.models": _register_mteb}


def load_plugins(target):
    """Load and register every entry point of the group that serves ``target`` (once per process)."""
    if target in _loaded:
        return
    _loaded.add(target)
    group = _TARGETS[target]
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        _load(group, ep)


def _load(group, ep):
    import logging

    try:
        _REGISTER[group](ep.name, ep.load())
    except Exception as exc:  # a broken plug-in must never break the harness
        if isinstance(exc, (ImportError, AttributeError)) and "partially initialized module" in str(exc):
            _pending.append((group, ep))  # circular import: the module calls retry_pending() once complete
            return
        logging.getLogger("moca_plugins").warning("plug-in %r of group %r failed to load: %r", ep.name, group, exc)


def retry_pending():
    """Load the entry points deferred by a circular import; a plug-in module calls this at its end."""
    pending = _pending[:]
    _pending.clear()
    for group, ep in pending:
        _load(group, ep)


class _LoaderWrapper:
    def __init__(self, inner, target):
        self._inner = inner
        self._target = target

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        load_plugins(self._target)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _Finder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderWrapper(spec.loader, fullname)
                return spec
        return None


def install():
    """Put the finder on ``sys.meta_path`` (idempotent); load at once for registries already imported."""
    for target in _TARGETS:
        if target in sys.modules:
            load_plugins(target)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
