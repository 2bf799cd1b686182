"""The reward-hacking alarm: the training reward rises while a held-out, verifier-only reward does not.

A policy that learns to please a composite reward's soft dimensions (a format, a length, a judge) without solving
more problems shows the gap: its training reward climbs, its accuracy on frozen held-out prompts, scored by the
verifier alone, stays flat or falls. The loop scores the held-out prompts every few steps and feeds both curves
here; over the last `window` measurements, a training rise of at least `min_rise` beside a held-out rise below
`max_held_out_rise` raises the alarm. Rises are least-squares slopes times the window's span of steps, so one noisy
step neither raises nor hides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AlarmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: int = Field(10, gt=0, description="Steps between two scorings of the held-out prompts.")
    window: int = Field(5, ge=2, description="Held-out measurements the two curves are compared over.")
    min_rise: float = Field(0.05, gt=0, description="The training reward's rise over the window that counts.")
    max_held_out_rise: float = Field(
        0.0, description="The held-out reward must rise more than this while the training reward rises."
    )
    stop: bool = Field(False, description="Stop the loop when the alarm is raised (else it is reported).")


@dataclass
class HackingAlarm:
    config: AlarmConfig
    curves: list[tuple[int, float, float]] = field(default_factory=list)  # (step, training reward, held-out)

    def observe(self, step: int, training: float, held_out: float) -> str | None:
        """Record one measurement; the alarm's message when the curves part, else None."""
        self.curves.append((step, training, held_out))
        if len(self.curves) < self.config.window:
            return None
        steps, train, held = np.array(self.curves[-self.config.window :], dtype=np.float64).T
        span = steps[-1] - steps[0]
        train_rise, held_rise = np.polyfit(steps, train, 1)[0] * span, np.polyfit(steps, held, 1)[0] * span
        if train_rise >= self.config.min_rise and held_rise <= self.config.max_held_out_rise:
            return (
                f"reward hacking suspected at step {step}: over steps {int(steps[0])}-{int(steps[-1])} the training "
                f"reward rose {train_rise:+.3f} while the held-out verifier-only reward moved {held_rise:+.3f}"
            )
        return None

    def state(self) -> list[list[float]]:
        return [list(point) for point in self.curves]
