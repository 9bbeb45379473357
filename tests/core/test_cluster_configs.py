"""Every shipped cluster file parses, is complete and secure, and fits its pretraining preset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray
import yaml

from ankh_platform.cluster_check import (
    ClusterFileError,
    check_file,
    check_slice,
    load_preset,
    load_slices,
    shipped_cluster_files,
    topology_chips,
)

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
FILES = shipped_cluster_files()
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}
PROJECT_VERSION = re.search(
    r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M
).group(1)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(doc: dict) -> str:
    if doc.get("apiVersion") == "ray.io/v1" and doc.get("kind") in KUBERAY_KINDS:
        return "kuberay"
    if "available_node_types" in doc or "provider" in doc:
        return "launcher"
    if "applications" in doc:
        return "serve"
    if doc.get("apiVersion") == "v1" and doc.get("kind") in {"ServiceAccount", "ConfigMap"}:
        return "k8s"
    return "unknown"


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in FILES for d in _docs(p) if _kind(d) == kind]


def _cluster_spec(doc: dict) -> dict:
    return {
        "RayCluster": lambda s: s,
        "RayJob": lambda s: s["rayClusterSpec"],
        "RayService": lambda s: s["rayClusterConfig"],
    }[doc["kind"]](doc["spec"])


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])
    ]


def test_the_expected_files_are_shipped_and_all_parse():
    names = {str(p.relative_to(CLUSTER)) for p in FILES}
    assert {
        "gcp-tpu-v4.yaml",
        "local.yaml",
        "kuberay/raycluster-tpu-v4.yaml",
        "kuberay/rayjob-pretrain.yaml",
        "kuberay/rayservice.yaml",
    } <= names
    for path in FILES:
        docs = _docs(path)
        assert docs, path
        for d in docs:
            assert _kind(d) != "unknown", f"{path}: unrecognised document {list(d)[:5]}"


@pytest.mark.parametrize("path,doc", _by_kind("launcher"), ids=lambda x: getattr(x, "name", ""))
def test_launcher_configs_validate_against_rays_schema(path, doc):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(doc))  # Ray's own schema + node-type checks
    starts = doc["head_start_ray_commands"] + doc.get("worker_start_ray_commands", [])
    for cmd in starts:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    head = next(c for c in doc["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head  # job API only via the tunnel / loopback
    assert "0.0.0.0" not in path.read_text()


def test_gcp_tpu_launcher_config_is_complete_and_pinned():
    from ray._private.accelerators.tpu import TPUAcceleratorManager

    doc = _docs(CLUSTER / "gcp-tpu-v4.yaml")[0]
    assert doc["provider"]["type"] == "gcp"
    tpu = doc["available_node_types"]["ray_tpu_v4"]["node_config"]
    assert tpu["acceleratorConfig"]["type"] == "V4" and tpu["runtimeVersion"]
    chips = topology_chips(tpu["acceleratorConfig"]["topology"])
    assert TPUAcceleratorManager.is_valid_tpu_accelerator_type(f"v4-{2 * chips}")
    head = doc["available_node_types"][doc["head_node_type"]]["node_config"]
    assert "machineType" in head and "acceleratorConfig" not in head  # CPU head
    assert doc["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(doc["setup_commands"])
    assert f"ray[default,train,serve,data]=={ray.__version__}" in setup  # the tested Ray
    assert "$HOME/ankh-platform" in setup and doc["file_mounts"]["~/ankh-platform"] == "."
    assert doc["metadata"]["ankh_pretrain_preset"]


@pytest.mark.parametrize("path,doc", _by_kind("kuberay"), ids=lambda x: getattr(x, "name", ""))
def test_kuberay_resources_are_secure_and_consistent(path, doc):
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    images = set()
    for pod in _pods(spec):
        assert pod.get("serviceAccountName") == "ankh-ray"  # Workload Identity, no key files
        images |= {c["image"] for c in pod["containers"]}
    assert len(images) == 1 and images.pop().endswith(f":{PROJECT_VERSION}")  # one version
    tpu_groups = 0
    for group in spec.get("workerGroupSpecs", []):
        pod = group["template"]["spec"]
        sel = pod["nodeSelector"]
        assert sel["cloud.google.com/gke-tpu-accelerator"] == "tpu-v4-podslice"
        chips = topology_chips(sel["cloud.google.com/gke-tpu-topology"])
        res = pod["containers"][0]["resources"]
        assert res["limits"]["google.com/tpu"] == res["requests"]["google.com/tpu"] == "4"
        assert group["numOfHosts"] * 4 == chips
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        tpu_groups += 1
    assert tpu_groups >= 1


def test_no_secret_values_are_shipped():
    for path in FILES:
        for d in _docs(path):
            assert d.get("kind") != "Secret", f"{path} ships a Secret"
        text = path.read_text()
        assert not re.search(r"(?i)private_key|BEGIN [A-Z ]*KEY", text), path


def _serve_configs() -> list[tuple[str, dict]]:
    out = [(p.name, d) for p, d in _by_kind("serve")]
    for p, d in _by_kind("kuberay"):
        if d["kind"] == "RayService":
            out.append((f"{p.name}:serveConfigV2", yaml.safe_load(d["spec"]["serveConfigV2"])))
    return out


@pytest.mark.parametrize(
    "where,cfg", _serve_configs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_serve_configs_validate(where, cfg):
    from ray.serve.schema import ServeDeploySchema

    from ankh_platform.core.config import from_dict
    from ankh_platform.serve.schema import ServeConfig

    schema = ServeDeploySchema.model_validate(cfg)  # Ray Serve's own schema
    for app in schema.applications:
        assert app.import_path == "ankh_platform.serve.app:build_app"
        from_dict(ServeConfig, app.args)  # the app's typed config: unknown keys fail


def test_rayservice_serves_the_cluster_apps_with_auth_from_a_secret():
    doc = _docs(CLUSTER / "kuberay" / "rayservice.yaml")[0]
    cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    app = cfg["applications"][0]
    assert app["args"]["auth"]["enabled"] is True
    env_var = app["args"]["auth"]["token_env"]
    for pod in _pods(_cluster_spec(doc)):
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        assert "secretKeyRef" in env[env_var]["valueFrom"]
    ref = CLUSTER / "serve-cluster.yaml"
    if ref.exists():  # the launcher's Serve config: same app, same auth
        ref_app = _docs(ref)[0]["applications"][0]
        assert ref_app["import_path"] == app["import_path"]
        assert ref_app["args"]["auth"] == app["args"]["auth"]


def test_rayjob_runs_pretraining_with_a_preset():
    doc = _docs(CLUSTER / "kuberay" / "rayjob-pretrain.yaml")[0]
    assert doc["spec"]["entrypoint"].startswith("python -m jobs.pretrain --config ")
    (sl,) = load_slices(CLUSTER / "kuberay" / "rayjob-pretrain.yaml")
    assert sl.preset and (REPO / "jobs" / "configs" / f"pretrain-{sl.preset}.yaml").exists()


def test_local_configs_bind_to_loopback_only():
    local = [p for p in FILES if "local" in p.stem]
    assert CLUSTER / "local.yaml" in local
    for path in local:
        assert "0.0.0.0" not in path.read_text(), path
        for d in _docs(path):
            if _kind(d) == "serve":
                assert d["http_options"]["host"] == "127.0.0.1", path
    doc = _docs(CLUSTER / "local.yaml")[0]
    assert doc["provider"]["type"] == "local" and doc["provider"]["head_ip"] == "127.0.0.1"
    head = " ".join(doc["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in head


# ---- preset mesh x slice chips -----------------------------------------------------------
def test_every_shipped_tpu_slice_fits_its_preset():
    reports = [r for p in FILES for r in check_file(p)]
    assert reports, "no TPU slices found"
    assert all(r.ok for r in reports), [(r.slice.where, r.problems) for r in reports if not r.ok]
    checked = [r for r in reports if r.slice.preset]
    assert {r.slice.preset for r in checked} >= {"base", "large"}
    for r in checked:
        assert r.mesh["data"] * r.mesh["fsdp"] * r.mesh["tensor"] == r.slice.chips


def _rewrite(src: Path, dest: Path, *subs: tuple[str, str]) -> Path:
    text = src.read_text()
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new)
    dest.write_text(text)
    return dest


def test_a_preset_on_the_wrong_slice_is_rejected(tmp_path):
    # base (2x2x4, 4 workers) on a 2x2x2 slice with 2 hosts: topology and workers disagree.
    bad = _rewrite(
        CLUSTER / "kuberay" / "raycluster-tpu-v4.yaml",
        tmp_path / "small.yaml",
        ("gke-tpu-topology: 2x2x4", "gke-tpu-topology: 2x2x2"),
        ("numOfHosts: 4 ", "numOfHosts: 2 "),
    )
    (r,) = check_file(bad)
    assert not r.ok
    text = " ".join(r.problems)
    assert "topology 2x2x4 != slice topology 2x2x2" in text and "num_workers=4" in text


def test_a_mesh_that_does_not_fit_the_chips_is_rejected(tmp_path):
    bad = _rewrite(
        CLUSTER / "kuberay" / "rayjob-pretrain.yaml",
        tmp_path / "job.yaml",
        ("--config large", "--config large mesh.tensor=3"),
    )
    (r,) = check_file(bad)
    assert not r.ok and "does not fit 64 chips" in " ".join(r.problems)


def test_a_launcher_slice_of_another_shape_is_rejected(tmp_path):
    bad = _rewrite(
        CLUSTER / "gcp-tpu-v4.yaml", tmp_path / "gcp.yaml", ("topology: 2x2x4 ", "topology: 2x2x3 ")
    )
    (r,) = check_file(bad)
    assert not r.ok and any("topology" in p for p in r.problems)
    with pytest.raises(ClusterFileError, match="AxBxC"):
        topology_chips("2x2xfour")


def test_check_cluster_cli_exit_status(tmp_path, capsys):
    from jobs.check_cluster import main

    assert main([]) == 0
    bad = _rewrite(
        CLUSTER / "kuberay" / "rayjob-pretrain.yaml",
        tmp_path / "job.yaml",
        ("numOfHosts: 16", "numOfHosts: 8"),
    )
    assert main([str(bad), "--json"]) == 1
    assert '"ok": false' in capsys.readouterr().out


def test_an_elastic_worker_range_counts_whole_slices(tmp_path):
    """A TPU slice is all or nothing: on 4-host slices (2x2x4) an elastic range must be
    multiples of 4, and the file must provision the max's slices (KubeRay maxReplicas)."""
    src = CLUSTER / "kuberay" / "raycluster-tpu-v4.yaml"
    (one,) = check_file(src, "base")  # 4 hosts, 1 slice: the shipped fixed run fits
    assert one.ok, one.problems

    def check(workers: str, max_replicas: int = 2) -> list[str]:
        f = _rewrite(
            src,
            tmp_path / f"{workers.replace(',', '-')}-{max_replicas}.yaml",
            ("maxReplicas: 1", f"maxReplicas: {max_replicas}"),
        )
        (sl,) = load_slices(f)
        return check_slice(sl, load_preset("base", (f"scale.num_workers={workers}",)))

    assert check("4,8") == []  # one or two whole slices
    assert any("all or nothing" in p and "multiple of 4" in p for p in check("2,8"))
    assert any("all or nothing" in p for p in check("4,6"))
    assert any("needs 2 slices" in p and "at most 1" in p for p in check("4,8", max_replicas=1))
