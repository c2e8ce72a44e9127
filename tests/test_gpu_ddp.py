"""DDP on GPUs (NCCL), spawned by fit. Skipped without CUDA; the two-process tests need 2 GPUs.
Run with ``scripts/gpu_check.sh``."""
import copy

import pytest
import torch
import torch.distributed as dist

from pytorch_lightning import Trainer

from ddp_models import Regression

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_nccl = pytest.mark.skipif(GPUS < 1 or not dist.is_nccl_available(),
                                reason='needs CUDA and NCCL')
needs_2_gpus = pytest.mark.skipif(GPUS < 2 or not dist.is_nccl_available(),
                                  reason=f'needs 2 GPUs with NCCL, this machine has {GPUS}')


def gpu_trainer(tmp_path, gpus, **kwargs):
    return Trainer(gpus=gpus, distributed_backend='ddp', default_save_path=tmp_path,
                   max_nb_epochs=2, nb_sanity_val_steps=0, progress_bar=False,
                   print_weights_summary=False, process_group_timeout=120, **kwargs)


@needs_nccl
@pytest.mark.parametrize('use_amp', [False, True])
def test_one_gpu_process_on_nccl(tmp_path, use_amp):
    torch.manual_seed(0)
    model = Regression()
    start = copy.deepcopy(model.state_dict())
    trainer = gpu_trainer(tmp_path, 1, use_amp=use_amp)
    trainer.fit(model)
    assert trainer.callback_metrics['val_count'] == 131
    assert trainer.global_step == 2 * 128 // 16
    assert any(not torch.equal(start[k], v.cpu()) for k, v in model.state_dict().items())


@needs_2_gpus
def test_two_gpus_train_the_weights_of_one_with_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    model = Regression(batch_size=16)
    reference = copy.deepcopy(model)
    reference.batch_size = 32
    Trainer(gpus=1, default_save_path=tmp_path / 'one', max_nb_epochs=2,
            nb_sanity_val_steps=0, progress_bar=False,
            print_weights_summary=False).fit(reference)
    trainer = gpu_trainer(tmp_path / 'ddp', 2)
    trainer.fit(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.allclose(a.cpu(), b.cpu(), atol=1e-5), name
    assert trainer.callback_metrics['val_count'] == 131
    one = reference.trainer.callback_metrics['val_loss']
    assert abs(float(trainer.callback_metrics['val_loss']) - float(one)) < 1e-5


@needs_2_gpus
def test_two_gpus_with_amp_and_two_optimizers(tmp_path):
    torch.manual_seed(0)
    model = Regression(optimizers=2)
    trainer = gpu_trainer(tmp_path, 2, use_amp=True)
    trainer.fit(model)
    assert trainer.callback_metrics['val_count'] == 131
    assert torch.isfinite(torch.as_tensor(trainer.callback_metrics['val_loss']))
