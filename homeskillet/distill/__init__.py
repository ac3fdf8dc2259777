"""Knowledge distillation: the loop that makes serving cheaper every day.

```
teacher answer ─▶ capture (pairs.py, HS_DISTILL) ─▶ dataset.py (filter, split, JSONL)
                                                  ─▶ train.py (LoRA, mlx-lm) ─▶ evaluate.py (held-out)
                                                  ─▶ canary.py (live verdicts) ─▶ promote | roll back
```

Each module is one step; ``agreement.py`` is the one measure every step uses.
"""

from .agreement import Agreement, agree, normalise
from .canary import Arm, Decision, StudentState, decide
from .dataset import Split, split_pairs, to_chat_record, trainable, write_jsonl

__all__ = [
    "Agreement",
    "Arm",
    "Decision",
    "Split",
    "StudentState",
    "agree",
    "decide",
    "normalise",
    "split_pairs",
    "to_chat_record",
    "trainable",
    "write_jsonl",
]
