"""The logger interface: what the Trainer's ``MetricsLogging`` callback calls. Subclass it to
log anywhere; pass an instance as ``Trainer(logger=...)``."""
import functools


def rank_zero_only(fn):
    """Decorate a logger method so that it runs only in the process of rank 0 (the logger's
    ``rank`` attribute, 0 unless the distributed placement sets it); elsewhere it returns
    ``None``. One process writes the logs; the others compute the same numbers."""
    @functools.wraps(fn)
    def wrapped(self, *args, **kwargs):
        if getattr(self, 'rank', 0) == 0:
            return fn(self, *args, **kwargs)
        return None
    return wrapped


class LightningLoggerBase:
    """A logger: ``log_hyperparams`` once per fit (and whenever you call it), ``log_metrics``
    for each row, ``save`` (has saved when it returns), ``finalize(status)`` when a fit or a
    test ends, ``name`` and ``version`` to tell runs apart (the default checkpoint folder is
    ``<default_save_path>/<name>/version_<version>/checkpoints`` unless the logger has a
    ``log_dir``; a part left ``None`` is left out). ``status`` is ``'finished'``, ``'failed'``
    or ``'interrupted'``."""

    rank = 0

    def log_hyperparams(self, params):
        """Record ``params`` (an ``argparse.Namespace`` or a dict); may be called again."""
        raise NotImplementedError

    def log_metrics(self, metrics, step=None):
        """Record one row: ``metrics`` maps names to numbers; ``step`` is the number of
        training batches seen (``trainer.state.total_batches``)."""
        raise NotImplementedError

    def save(self):
        """Write what was logged so far; it is saved when this returns."""

    def finalize(self, status):
        """The run ended (``status``); save and release what the logger holds."""

    #: the run's name and version (a subclass sets or computes them)
    name = None
    version = None
