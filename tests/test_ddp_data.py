"""The loaders of several processes, without starting any: the training loader rebuilt around
a DistributedSampler, and the disjoint, unpadded evaluation shards."""
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from pytorch_lightning.data import ShardSampler, distributed_loader, shard_loader


def dataset(n):
    return TensorDataset(torch.arange(n).float().unsqueeze(1))


def indices(loader):
    return [int(v) for (batch,) in loader for v in batch.flatten()]


@pytest.mark.parametrize('shuffle', [False, True])
def test_training_loader_gets_a_distributed_sampler_that_keeps_its_settings(shuffle):
    def collate(items):
        return torch.utils.data.default_collate(items)

    loader = DataLoader(dataset(20), batch_size=3, shuffle=shuffle, drop_last=True,
                        collate_fn=collate, pin_memory=False)
    ranks = [distributed_loader(loader, rank, 2, seed=7, name='tng_dataloader')
             for rank in range(2)]
    for rebuilt, sampler in ranks:
        assert isinstance(sampler, DistributedSampler) and rebuilt.sampler is sampler
        assert rebuilt.batch_size == 3 and rebuilt.drop_last and rebuilt.collate_fn is collate
        assert sampler.shuffle == shuffle and sampler.seed == 7
        assert len(rebuilt) == 10 // 3  # 10 samples per rank, whole batches only
    seen = [indices(rebuilt) for rebuilt, _ in ranks]
    assert not set(seen[0]) & set(seen[1])  # disjoint
    if shuffle:  # set_epoch redraws the order, the same way on every rank
        first = indices(ranks[0][0])
        ranks[0][1].set_epoch(1)
        assert indices(ranks[0][0]) != first
    else:
        assert seen[0][:3] == [0, 2, 4] and seen[1][:3] == [1, 3, 5]


def test_a_custom_sampler_is_kept_with_one_warning_naming_the_loader():
    loader = DataLoader(dataset(10), sampler=list(range(10)), batch_size=2)
    with pytest.warns(UserWarning, match='train_dataloader.*list.*not a DistributedSampler'):
        kept, sampler = distributed_loader(loader, 0, 2, seed=0, name='train_dataloader')
    assert kept is loader and sampler is None


def test_a_distributed_sampler_of_the_user_is_kept_and_set_each_epoch():
    sampler = DistributedSampler(dataset(10), num_replicas=2, rank=1, shuffle=False)
    loader = DataLoader(dataset(10), sampler=sampler, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert distributed_loader(loader, 1, 2, seed=0, name='tng') == (loader, sampler)


@pytest.mark.parametrize('n, world', [(131, 2), (7, 3), (2, 4), (0, 2)])
def test_evaluation_shards_cover_every_sample_exactly_once(n, world):
    loader = DataLoader(dataset(n), batch_size=4)
    shards = [shard_loader(loader, rank, world, 'val_dataloader') for rank in range(world)]
    assert all(sharded for _, sharded in shards)
    seen = [indices(shard) for shard, _ in shards]
    assert sorted(i for part in seen for i in part) == list(range(n))  # no padding, no gap
    assert [len(ShardSampler(range(n), r, world)) for r in range(world)] == \
        [len(part) for part in seen]


def test_an_unshardable_evaluation_loader_is_evaluated_whole_with_a_warning():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.arange(6).float().unsqueeze(1))

    loader = DataLoader(Stream(), batch_size=2)
    with pytest.warns(UserWarning, match='val_dataloader.*cannot shard'):
        kept, sharded = shard_loader(loader, 1, 2, 'val_dataloader')
    assert kept is loader and not sharded
