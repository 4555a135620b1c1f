"""What the job's driver knows of the base without loading its weights (pipelines/model_store.py
`describe_base`): ids and sizes from the config files, the fingerprint from a file next to the
weights, computed once by a Ray task and recomputed when the weights file changes."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from omnipersona.model.checkpoint import load_bagel
from pipelines import model_store
from pipelines.model_store import FINGERPRINT_FILE, describe_base
from tests.services.s3 import upload_tree

pytestmark = pytest.mark.integration


@pytest.fixture()
def counted_worker_fingerprints(monkeypatch):
    """Each computation of the fingerprint on a worker (the real Ray task runs)."""
    calls = []
    real = model_store._fingerprint_on_a_worker

    def counted(uri, storage):
        calls.append(uri)
        return real(uri, storage)

    monkeypatch.setattr(model_store, "_fingerprint_on_a_worker", counted)
    return calls


def test_the_driver_describes_a_local_base_as_loading_it_would_and_fingerprints_it_once(
        tiny_bagel_dir, tmp_path, ray_session, counted_worker_fingerprints):
    base = tmp_path / "base"
    shutil.copytree(tiny_bagel_dir, base)
    (base / FINGERPRINT_FILE).unlink(missing_ok=True)
    loaded = load_bagel(str(base))

    info = describe_base(str(base))
    assert (info.fingerprint, info.model_id, info.hidden_size, info.num_layers) == (
        loaded.fingerprint, loaded.config.model_id, loaded.config.llm.hidden_size, loaded.config.llm.num_hidden_layers)
    assert counted_worker_fingerprints == [str(base)], "computed by a Ray task"
    assert json.loads((base / FINGERPRINT_FILE).read_text())["fingerprint"] == loaded.fingerprint

    assert describe_base(str(base)).fingerprint == loaded.fingerprint
    assert len(counted_worker_fingerprints) == 1, "the second job reads the recorded fingerprint"

    # New weights under the same name: the record no longer matches them and is not used.
    weights = base / "ema.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert describe_base(str(base)).fingerprint == loaded.fingerprint
    assert len(counted_worker_fingerprints) == 2


def test_a_base_on_s3_is_described_from_its_small_files(tiny_bagel_dir, s3_server, ray_session,
                                                         counted_worker_fingerprints):
    upload_tree(s3_server, tiny_bagel_dir, "base-info/base")
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"base-info/base/{FINGERPRINT_FILE}")
    uri = s3_server.uri("base-info/base")
    expected = load_bagel(str(tiny_bagel_dir)).fingerprint
    assert describe_base(uri, s3_server.storage_config()).fingerprint == expected
    assert describe_base(uri, s3_server.storage_config()).fingerprint == expected
    assert counted_worker_fingerprints == [uri]
    recorded = s3_server.client().get_object(Bucket=s3_server.bucket, Key=f"base-info/base/{FINGERPRINT_FILE}")
    assert json.loads(recorded["Body"].read())["fingerprint"] == expected


def test_a_folder_without_weights_is_refused_in_words(tmp_path, ray_session):
    (tmp_path / "llm_config.json").write_text(json.dumps({"hidden_size": 8, "num_hidden_layers": 1}))
    with pytest.raises(FileNotFoundError, match="point model.uri at a BAGEL checkpoint folder"):
        describe_base(str(tmp_path))
