"""The MLflow pyfunc model a training run logs as ``encoder``: images -> named partition codes.

This file is logged as *model code* (MLflow's models-from-code: ``python_model=<this file>``),
so a logged model loads and serves where gvae_dist is not installed: it imports only torch,
numpy, pandas and MLflow, and reads two artifacts written by
:func:`gvae_dist.tracking.log_codes_model`:

- ``program``: the encoder's posterior mean as a ``torch.export`` program (``.pt2``), images
  ``[N, C, H, W]`` float32 in [0, 1] -> codes ``[N, D]`` (batch dim dynamic);
- ``partitions``: JSON ``[{"name": "pose", "start": 0, "size": 4}, ...]`` (the run's config).

``predict`` returns a DataFrame with one column group per partition, ``<name>_<i>`` for its
i-th dim (``pose_0 .. pose_3, expression_0 .. , rest_0 ..``), in latent order: the same numbers
as ``gvae-dist encode``'s per-partition arrays. The column naming is repeated here rather than
imported from gvae_dist (``gvae_dist.gate.PartitionSpec.code_columns``) because of the above.

gvae_dist never imports this module: MLflow executes it when it loads the model.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import torch


class PartitionCodes(mlflow.pyfunc.PythonModel):
    """Posterior-mean codes of images, one column group per latent partition."""

    def load_context(self, context):
        self.program = torch.export.load(context.artifacts["program"]).module()
        with open(context.artifacts["partitions"]) as fh:
            self.partitions = json.load(fh)
        self.columns = [f"{p['name']}_{i}" for p in self.partitions for i in range(p["size"])]

    # np.ndarray: a hint MLflow infers no schema from (the logged signature validates) and, unlike
    # no hint at all, one that does not warn on every load
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        x_NCHW = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            mu_ND = self.program(x_NCHW).numpy()
        return pd.DataFrame(mu_ND, columns=self.columns)


mlflow.models.set_model(PartitionCodes())
