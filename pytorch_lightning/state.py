"""One object that holds every loop counter (what a checkpoint saves to resume)."""
import dataclasses


@dataclasses.dataclass
class TrainerState:
    epoch: int = 0                  # current epoch (0-based)
    global_step: int = 0            # optimizer steps taken (completed accumulation windows)
    batch_idx: int = 0              # index of the current training batch inside the epoch
    total_batches: int = 0          # training batches processed over the whole run
    accumulation_position: int = 0  # batches already accumulated into the open window
    should_stop: bool = False       # set by a callback (e.g. early stopping) to end training
    stage: str = 'idle'             # 'idle' | 'sanity_check' | 'train' | 'validate' | 'test'
    # steps taken by each optimizer (step-wise LR schedulers count these)
    optimizer_steps: list = dataclasses.field(default_factory=list)

    def state_dict(self):
        return dataclasses.asdict(self)

    def load_state_dict(self, state):
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in state.items():
            if key in names:
                setattr(self, key, list(value) if isinstance(value, (list, tuple)) else value)
