"""Workload files: lists of convolution problems, shared by the demo, benchmarks and the tuner.

A workload is JSON ``{"name": ..., "description": ..., "problems": [...]}``; each problem names
the *forward* convolution by its user-level shapes and Theano arguments::

    {"name": "r50_3x3_56", "nd": 2, "input": [8, 64, 56, 56], "filters": [64, 64, 3, 3],
     "border_mode": 1, "subsample": [1, 1], "filter_dilation": [1, 1], "num_groups": 1,
     "unshared": false, "filter_flip": true, "dtype": "float32", "op": "conv"}

``op`` is a label for people ('conv', 'transpose', 'causal', ...): a transposed convolution is
listed as the forward convolution whose grad-input it is. Workloads ship inside the package
(``tuning/workloads`` in the repository) and are found by name, or by path.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources

import numpy as np

from . import dispatch
from .spec import DIRECTIONS, FORWARD, GRAD_INPUT, build


def _tuples(v):
    return tuple(_tuples(e) for e in v) if isinstance(v, list) else v


@dataclass(frozen=True)
class Problem:
    name: str
    nd: int
    input: tuple
    filters: tuple
    border_mode: object = "valid"
    subsample: object = 1
    filter_dilation: object = 1
    num_groups: int = 1
    unshared: bool = False
    filter_flip: bool = True
    dtype: str = "float32"
    op: str = "conv"

    @classmethod
    def from_dict(cls, d):
        d = {k: _tuples(v) for k, v in d.items()}
        return cls(**d)

    def spec(self, direction=FORWARD):
        return build(
            direction, self.nd, self.input, self.filters, border_mode=self.border_mode,
            subsample=self.subsample, filter_dilation=self.filter_dilation,
            num_groups=self.num_groups, unshared=self.unshared, filter_flip=self.filter_flip,
            dtype=self.dtype, names={"x": "input", "w": "filters"},
        )

    def arrays(self, seed=0):
        """Random user-shaped x, w, dy (the same numbers for every direction)."""
        spec = self.spec()
        rng = np.random.default_rng(seed)
        return tuple(
            rng.standard_normal(shape, dtype=np.float32).astype(spec.np_dtype)
            for shape in (spec.user_x_shape, spec.user_w_shape, spec.user_y_shape)
        )

    def operands(self, direction, seed=0):
        """The spec of ``direction`` and its random canonical operands (a, b) (see
        :mod:`nbconv.registry`)."""
        spec = self.spec(direction)
        x, w, dy = self.arrays(seed)
        x, w, dy = x.reshape(spec.x_shape), w.reshape(spec.w_shape), dy.reshape(spec.y_shape)
        if direction == FORWARD:
            return spec, x, w
        if direction == GRAD_INPUT:
            return spec, dy, w
        return spec, x, dy

    def run(self, spec, a, b, algo=None):
        return dispatch.execute(spec, a, b, algo)


def workload_path(name_or_path):
    if os.path.exists(name_or_path):
        return name_or_path
    ref = resources.files("nbconv.workloads").joinpath(f"{name_or_path}.json")
    if not ref.is_file():
        known = sorted(p.name[:-5] for p in resources.files("nbconv.workloads").iterdir() if p.name.endswith(".json"))
        raise ValueError(f"no workload file or built-in workload named {name_or_path!r} (built-in: {known})")
    return str(ref)


def load_workload(name_or_path):
    with open(workload_path(name_or_path)) as f:
        data = json.load(f)
    return data.get("name", name_or_path), [Problem.from_dict(p) for p in data["problems"]]


__all__ = ["Problem", "load_workload", "workload_path", "DIRECTIONS"]
