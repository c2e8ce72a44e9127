"""The log-writer process: owns test-tube ``Experiment`` objects and does their slow work
(TensorBoard scalars, CSV rewrites) on another core, so the training thread never waits.

Run as ``python -m pytorch_lightning.loggers._writer``. It reads pickled requests from stdin
and writes pickled replies to its original stdout; anything printed goes to stderr.

Requests: ('open', key, kwargs) ('log', key, row, step) ('tag', key, dict) ('save', key)
('truncate', key, nb_rows) ('flush', key) ('close', key) ('exit',). Replies (only to open/flush/close):
(kind, key, payload, error_text_or_None).
"""
import os
import pickle
import sys
import traceback


def _serve(requests, replies):
    from test_tube import Experiment

    experiments, errors = {}, {}

    def reply(kind, key, payload=None):
        pickle.dump((kind, key, payload, errors.pop(key, None)), replies,
                    protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()

    def guarded(key, fn, *args):
        try:
            return fn(*args)
        except Exception:  # reported to the training process at its next flush/close
            errors.setdefault(key, traceback.format_exc())
            return None

    def open_experiment(kwargs):
        exp = Experiment(**kwargs)
        if exp.debug and not kwargs.get('debug'):
            raise RuntimeError(
                f"test-tube could not open experiment {kwargs!r}: its folder exists but "
                f"meta.experiment/meta_tags.csv are unreadable. Call experiment.save() before "
                f"fit or pick another version.")
        return exp

    def close(key):
        exp = experiments.pop(key, None)
        if exp is None:
            return None
        guarded(key, exp.save)
        guarded(key, exp.close)
        return {'metrics': exp.metrics, 'tags': exp.tags}

    while True:
        try:
            msg = pickle.load(requests)
        except EOFError:  # the training process is gone: save what we have, then leave
            for key in list(experiments):
                close(key)
            return
        kind, key = msg[0], (msg[1] if len(msg) > 1 else None)
        if kind == 'log':
            exp = experiments.get(key)
            if exp is not None:
                guarded(key, exp.log, msg[2], msg[3])
        elif kind == 'save':
            exp = experiments.get(key)
            if exp is not None:
                guarded(key, exp.save)
        elif kind == 'tag':
            exp = experiments.get(key)
            if exp is not None:
                guarded(key, exp.tag, msg[2])
        elif kind == 'open':
            exp = guarded(key, open_experiment, msg[2])
            if exp is not None:
                experiments[key] = exp
            reply('opened', key, None if exp is None else exp.version)
        elif kind == 'flush':
            exp = experiments.get(key)
            if exp is not None:
                guarded(key, exp.save)
            reply('flushed', key, None if exp is None else len(exp.metrics))
        elif kind == 'truncate':  # resume: drop rows logged after the checkpoint
            exp = experiments.get(key)
            if exp is not None:
                del exp.metrics[msg[2]:]
                guarded(key, exp.save)
        elif kind == 'close':
            reply('closed', key, close(key))
        elif kind == 'exit':
            for k in list(experiments):
                close(k)
            reply('exited', None)
            return


def main():
    replies = os.fdopen(os.dup(1), 'wb')
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the reply stream
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, replies)


if __name__ == '__main__':
    main()
