"""Pins the loop's hook order (docs/hooks.md) on a 2-epoch run."""
import torch

from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback

from models import TinyModel

MODULE_HOOKS = ['on_sanity_check_start', 'on_epoch_start', 'on_batch_start', 'on_after_backward',
                'on_before_zero_grad', 'on_batch_end', 'on_pre_performance_check',
                'on_post_performance_check', 'on_epoch_end']


class Recording(TinyModel):
    def __init__(self, log):
        super().__init__(n=32, batch_size=8)  # 4 training batches per epoch
        self.log = log

    def training_step(self, data_batch, batch_nb):
        self.log.append(f'training_step:{batch_nb}')
        return super().training_step(data_batch, batch_nb)

    def validation_step(self, data_batch, batch_nb):
        self.log.append(f'validation_step:{batch_nb}')
        return super().validation_step(data_batch, batch_nb)

    def validation_end(self, outputs):
        self.log.append('validation_end')
        return super().validation_end(outputs)

    def configure_optimizers(self):
        self.log.append('configure_optimizers')
        return super().configure_optimizers()

    @property
    def tng_dataloader(self):
        self.log.append('tng_dataloader')
        return super().tng_dataloader

    def optimizer_step(self, epoch_nb, batch_nb, optimizer, optimizer_i):
        self.log.append(f'optimizer_step:{epoch_nb}:{batch_nb}')
        optimizer.step()

    def backward(self, use_amp, loss, optimizer):  # classic: replaces the trainer's backward
        self.log.append('backward')
        loss.backward()

    @property
    def val_dataloader(self):
        from models import make_loader
        self.log.append('val_dataloader')
        return make_loader(16, 8, seed=1)  # 2 validation batches


def _add_module_hooks(cls, log_name='log'):
    for name in MODULE_HOOKS:
        def hook(self, *args, _name=name):
            self.log.append(_name)
        setattr(cls, name, hook)


_add_module_hooks(Recording)


class RecordingCallback(Callback):
    def __init__(self, log):
        self.log = log

    def _rec(name):
        def hook(self, trainer, module, *args):
            self.log.append('cb.' + name)
        return hook

    for _name in ('on_fit_setup', 'on_fit_start', 'on_sanity_check_start', 'on_epoch_start',
                  'on_batch_start', 'on_after_backward', 'on_before_optimizer_step',
                  'on_before_zero_grad', 'on_batch_end', 'on_pre_performance_check',
                  'on_validation_batch_end', 'on_validation_end', 'on_post_performance_check',
                  'on_epoch_end', 'on_save_point', 'on_test_end', 'on_fit_end', 'on_exception'):
        locals()[_name] = _rec(_name)
    del _name


def expected_order(epochs=2, train_batches=4, val_batches=2, sanity=2, accumulate=1):
    # on_fit_setup: after the optimizers and loaders are read, before on_fit_start
    seq = ['configure_optimizers', 'tng_dataloader', 'val_dataloader', 'cb.on_fit_setup',
           'cb.on_fit_start',
           'on_sanity_check_start', 'cb.on_sanity_check_start',
           'on_pre_performance_check', 'cb.on_pre_performance_check']
    for i in range(sanity):
        seq += [f'validation_step:{i}', 'cb.on_validation_batch_end']
    seq += ['validation_end', 'on_post_performance_check', 'cb.on_post_performance_check']
    for epoch in range(epochs):
        seq += ['on_epoch_start', 'cb.on_epoch_start']
        for b in range(train_batches):
            # the closure (training_step, backward) runs before the module's classic
            # optimizer_step override; gradients are complete before the step
            seq += ['on_batch_start', 'cb.on_batch_start', f'training_step:{b}', 'backward',
                    'on_after_backward', 'cb.on_after_backward']
            if (b + 1) % accumulate == 0:
                seq += ['cb.on_before_optimizer_step', f'optimizer_step:{epoch}:{b}',
                        'on_before_zero_grad', 'cb.on_before_zero_grad']
            seq += ['on_batch_end', 'cb.on_batch_end']
            if b == train_batches - 1:  # the epoch's validation point, before its save point
                seq += ['on_pre_performance_check', 'cb.on_pre_performance_check']
                for i in range(val_batches):
                    seq += [f'validation_step:{i}', 'cb.on_validation_batch_end']
                seq += ['validation_end', 'cb.on_validation_end', 'on_post_performance_check',
                        'cb.on_post_performance_check']
            seq += ['cb.on_save_point']
        seq += ['on_epoch_end', 'cb.on_epoch_end', 'cb.on_save_point']
    seq += ['cb.on_fit_end']
    return seq


def test_two_epoch_hook_order(quiet):
    log = []
    model = Recording(log)
    trainer = Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=2,
                              callbacks=[RecordingCallback(log)]))
    trainer.fit(model)
    assert log == expected_order()


def test_hook_order_with_accumulation(quiet):
    log = []
    trainer = Trainer(**quiet(max_nb_epochs=2, nb_sanity_val_steps=2, accumulate_grad_batches=2,
                              callbacks=[RecordingCallback(log)]))
    trainer.fit(Recording(log))
    assert log == expected_order(accumulate=2)


def test_on_fit_setup_runs_before_a_checkpoint_is_restored(quiet):
    """Each fit resets its callbacks in on_fit_setup; a resume gives their state back right
    after, so the restored state is what the run continues with."""
    class Stateful(RecordingCallback):
        def state_dict(self):
            return {'saved': 'by the first run'}

        def load_state_dict(self, state):
            self.log.append(f"cb.load_state_dict:{state['saved']}")

    first = Trainer(**quiet(callbacks=[Stateful([])]))
    first.fit(Recording([]))
    checkpoint = first.checkpoint_callback.last_path
    assert checkpoint is not None

    log = []
    Trainer(**quiet(max_nb_epochs=2, callbacks=[Stateful(log)],
                    resume_from_checkpoint=checkpoint)).fit(Recording(log))
    assert log[:log.index('cb.on_fit_start') + 1] == [
        'configure_optimizers', 'tng_dataloader', 'val_dataloader', 'cb.on_fit_setup',
        'cb.load_state_dict:by the first run', 'cb.on_fit_start']


def test_test_loop_hooks(quiet):
    log = []
    model = Recording(log)
    trainer = Trainer(**quiet(callbacks=[RecordingCallback(log)]))
    trainer.fit(model)
    del log[:]
    metrics = trainer.test()
    assert log == ['cb.on_test_end']
    assert set(metrics) == {'test_acc'} and isinstance(metrics['test_acc'], torch.Tensor)


def test_seed_style_zero_argument_hooks(quiet):
    calls = []

    class Seed(TinyModel):
        def on_batch_start(self):
            calls.append('start')

        def on_before_zero_grad(self):
            calls.append('zero')

    Trainer(**quiet(nb_sanity_val_steps=0)).fit(Seed(n=16))
    assert calls == ['start', 'zero'] * 2


def test_failing_fit_calls_on_exception_instead_of_on_fit_end(quiet):
    """The order up to the failure is the usual one; then every callback's on_exception runs
    (not on_fit_end), and the error propagates unchanged."""
    import pytest

    class FailsInEpoch1(Recording):
        def training_step(self, data_batch, batch_nb):
            if self.trainer.current_epoch == 1 and batch_nb == 2:
                self.log.append('training_step:2')
                raise ValueError('bad batch')
            return super().training_step(data_batch, batch_nb)

    class SeesTheError(Callback):
        def on_exception(self, trainer, module, error):
            log.append(f'second.on_exception:{error}')

    log = []
    trainer = Trainer(**quiet(callbacks=[RecordingCallback(log), SeesTheError()],
                              max_nb_epochs=2, nb_sanity_val_steps=2))
    with pytest.raises(ValueError, match='bad batch'):
        trainer.fit(FailsInEpoch1(log))
    full = expected_order(epochs=2)
    cut = full.index('training_step:2', full.index('cb.on_epoch_start', 20))
    assert log == full[:cut + 1] + ['cb.on_exception', 'second.on_exception:bad batch']
    assert trainer.state.stage == 'idle'


def test_a_failing_on_exception_is_attached_not_raised(quiet):
    import pytest

    class Broken(Callback):
        def on_exception(self, trainer, module, error):
            raise OSError('disk gone')

    class Fails(TinyModel):
        def training_step(self, data_batch, batch_nb):
            raise ValueError('the real error')

    with pytest.raises(ValueError, match='the real error') as info:
        Trainer(**quiet(callbacks=[Broken()])).fit(Fails())
    assert any('Broken.on_exception also failed' in note and 'disk gone' in note
               for note in getattr(info.value, '__notes__', []))
