"""writers: metrics.jsonl rows stay strict JSON (any reader parses them) whatever the values."""

import json

import numpy as np

from jaxgan import writers


def test_rows_are_strict_json_with_non_finite_values_as_strings(tmp_path):
  w = writers.MetricsWriter(str(tmp_path), tensorboard=False)
  w.write_scalars(np.int64(3), {"d_loss": np.float32(np.nan), "g_loss": float("inf"),
                                "lr": np.float32(0.5), "data_bad_files": np.int32(2)})
  w.close()
  line = (tmp_path / "metrics.jsonl").read_text().strip()
  # Python's json would accept bare NaN/Infinity; strict readers (jq, JavaScript) do not.
  row = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
  assert row == {"step": 3, "d_loss": "nan", "g_loss": "inf", "lr": 0.5, "data_bad_files": 2}
  assert writers.read_metrics(str(tmp_path)) == [row]
