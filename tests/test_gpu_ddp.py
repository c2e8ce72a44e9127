"""DDP on GPUs (NCCL), spawned by fit, and the world part's flag agreement on NCCL. Skipped
without CUDA; the two-process tests need 2 GPUs. No logger: test-tube, the default one, may be
missing on a GPU machine (the CPU suite tests logging under DDP). Run with
``scripts/gpu_check.sh``."""
import copy
import datetime

import pytest
import torch
import torch.distributed as dist

from pytorch_lightning import Trainer
from pytorch_lightning.placement import CUDADevice
from pytorch_lightning.placement.ddp import DistributedWorld
from pytorch_lightning.placement.launch import ClusterEnvironment, free_port

from ddp_models import Regression
from host_syncs import cuda_sync_warnings

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
needs_nccl = pytest.mark.skipif(GPUS < 1 or not dist.is_nccl_available(),
                                reason='needs CUDA and NCCL')
needs_2_gpus = pytest.mark.skipif(GPUS < 2 or not dist.is_nccl_available(),
                                  reason=f'needs 2 GPUs with NCCL, this machine has {GPUS}')


def gpu_trainer(tmp_path, gpus, **kwargs):
    return Trainer(gpus=gpus, distributed_backend='ddp', default_save_path=tmp_path,
                   max_nb_epochs=2, nb_sanity_val_steps=0, progress_bar=False,
                   print_weights_summary=False, experiment=False, process_group_timeout=60,
                   **kwargs)


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
            nb_sanity_val_steps=0, progress_bar=False, print_weights_summary=False,
            experiment=False).fit(reference)
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


@needs_nccl
def test_agreeing_on_flags_over_nccl_reads_the_device_once():
    """A decision point under DDP: bools and a device flag, one all-reduce, one host read. A
    bool built with torch.tensor(x, device='cuda') would be a blocking copy from the host, a
    host sync of its own. Runs a one-rank NCCL group in this process."""
    env = ClusterEnvironment(rank=0, local_rank=0, world_size=1, local_world_size=1,
                             node_rank=0, master_addr='127.0.0.1', master_port=free_port(),
                             source='torchrun')
    dist.init_process_group('nccl', init_method=f'tcp://127.0.0.1:{env.master_port}',
                            rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    try:
        world = DistributedWorld(env, 'nccl', timeout_s=60)
        world.join(CUDADevice(0))  # the group exists: checked and used
        assert world.agree(False) == (False,)  # NCCL starts its communicator here
        flag = torch.tensor(True, device='cuda')
        with cuda_sync_warnings() as count:
            agreed = world.agree(True, False, flag)
            syncs = count()
        assert agreed == (True, False, True)
        assert syncs == 1, f'{syncs} host syncs for one agreement'
    finally:
        dist.destroy_process_group()
