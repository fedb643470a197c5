"""deploy/: what takes the jobs to a real cluster. No Docker, Kubernetes or cloud here, so each
file is checked against what would accept it there: KubeRay's CRD schemas, the cluster
launcher's schema in the ray package, Ray's RuntimeEnv, the jobs' own settings models. Every
check also runs on a broken copy, which must fail, so that a check that passes anything shows.
"""

from __future__ import annotations

import copy
import gzip
import importlib.resources
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import ray
import yaml
from pydantic import BaseModel, ValidationError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
JOBS = {"rayjob-bootstrap.yaml": "pipelines.bootstrap", "rayjob-rounds.yaml": "pipelines.rounds"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _load_script(KUBERAY / "validate.py")
extract = _load_script(KUBERAY / "crds" / "extract.py")


def _docs(name: str) -> list[dict]:
    return validate.load_documents(KUBERAY / name)


def _one(docs: list[dict], kind: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


# -- Dockerfile --------------------------------------------------------------------------------

def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def base_image(instructions: list[tuple[str, str]], build_args: dict[str, str] | None = None) -> str:
    """The first FROM with the ARGs declared before it substituted (build args win)."""
    values: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ARG":
            name, _, default = rest.partition("=")
            values[name] = default.strip('"')
        elif word == "FROM":
            values.update(build_args or {})
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], rest.split()[0])
    raise AssertionError("no FROM")


TORCH = re.compile(r"\$\{?TORCH_SPEC\b|(?<![\w-])torch(?=[=<>~!\s\"']|$)")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_?KEY|CREDENTIAL|PRIVATE", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|\bghp_\w{20,}|\bhf_\w{30,}|\bsk-\w{20,}")
SECRET_FILE = re.compile(r"(^|[\s/])(\.env|\.netrc|\.aws|\.ssh|id_rsa|id_ed25519|\.pypirc|\.git-credentials)\b")


def dockerfile_problems(text: str) -> list[str]:
    """What makes the image recipe wrong for this project; [] when it is right."""
    problems = []
    ins = parse_dockerfile(text)
    image = base_image(ins)
    name, _, tag = image.partition(":")
    if name != "rayproject/ray":
        problems.append(f"base image {name!r} is not the official Ray image (rayproject/ray, no host)")
    m = re.fullmatch(r"(\d+\.\d+\.\d+)-py(\d)(\d+)(-gpu)?", tag)
    if not m:
        problems.append(f"base tag {tag!r} is not <ray version>-py3XX[-gpu]")
    else:
        if _major_minor(m.group(1)) != _major_minor(ray.__version__):
            problems.append(f"base image ray {m.group(1)} != installed ray {ray.__version__}")
        if (int(m.group(2)), int(m.group(3))) < (3, 10):
            problems.append(f"base image Python {m.group(2)}.{m.group(3)} is below requires-python")
        gpu = base_image(ins, {"RAY_FLAVOR": "-gpu"})
        if not gpu.endswith("-gpu"):
            problems.append("no RAY_FLAVOR build arg selecting the GPU base image")

    runs = [(i, rest) for i, (word, rest) in enumerate(ins) if word == "RUN"]
    torch_at = [i for i, r in runs if "pip install" in r and TORCH.search(r)]
    project_at = [i for i, r in runs if re.search(r"pip install\b[^&;]*\s\.(\s|$)", r)]
    if not torch_at:
        problems.append("torch is not installed by its own RUN")
    if not project_at:
        problems.append("the project is not installed with `pip install .`")
    if torch_at and project_at and max(torch_at) > min(project_at):
        problems.append("torch is installed after the project (pip would pull its own torch)")
    if not any(w == "ARG" and r.startswith("TORCH_SPEC") for w, r in ins):
        problems.append("no TORCH_SPEC build arg")
    copied = " ".join(r for w, r in ins if w in ("COPY", "ADD"))
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    for needed in sorted(packages | {"pyproject.toml"}):
        if not re.search(rf"(^|\s|/){re.escape(needed)}(\s|/|$)", copied):
            problems.append(f"{needed} is not copied into the image")
    copies_at = [i for i, (w, _) in enumerate(ins) if w in ("COPY", "ADD")]
    if project_at and copies_at and max(project_at) < max(copies_at):
        problems.append("files are copied after the last `pip install .`")
    if not any(w == "RUN" and re.search(r"openjdk|-jre|-jdk", r) for w, r in ins):
        problems.append("no Java for pycocoevalcap")

    for word, rest in ins:
        if word in ("ARG", "ENV") and SECRET_NAME.search(rest.split("=")[0]):
            problems.append(f"{word} {rest.split('=')[0]} looks like a secret baked into the image")
        if word in ("COPY", "ADD") and SECRET_FILE.search(rest):
            problems.append(f"{word} {rest} copies a credentials file")
    if SECRET_VALUE.search(text):
        problems.append("a credential-shaped string is in the Dockerfile")
    return problems


def test_dockerfile_is_right():
    assert dockerfile_problems((DEPLOY / "Dockerfile").read_text()) == []


def _swap(a: str, b: str) -> Callable[[str], str]:
    return lambda t: t.replace(a, b)


@pytest.mark.parametrize(
    "breakage, needle",
    [
        (_swap("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.9.3"), "!= installed ray"),
        (_swap("FROM rayproject/ray:", "FROM registry.example/ray:"), "official Ray image"),
        (_swap('"${TORCH_SPEC}"', "numpy"), "torch is not installed"),
        (lambda t: t + "\nRUN pip install --no-cache-dir torch\n", "torch is installed after"),
        (_swap("COPY --chown=ray:users model ./model", ""), "model is not copied"),
        (_swap("openjdk-17-jre-headless", "curl"), "no Java"),
        (lambda t: t + "\nENV HF_TOKEN=abc\n", "secret"),
        (lambda t: t + "\nCOPY .netrc /home/ray/\n", "credentials file"),
        (lambda t: t + "\nRUN echo AKIAABCDEFGHIJKLMNOP\n", "credential-shaped"),
    ],
)
def test_dockerfile_checks_catch_a_broken_recipe(breakage, needle):
    text = (DEPLOY / "Dockerfile").read_text()
    broken = breakage(text)
    assert broken != text
    problems = dockerfile_problems(broken)
    assert any(needle in p for p in problems), problems


def test_docker_context_leaves_out_venv_and_outputs():
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for path in (".venv", ".git", "out", "demo-out"):
        assert path in ignored


# -- KubeRay manifests -------------------------------------------------------------------------

MANIFESTS = sorted(p.name for p in KUBERAY.glob("*.yaml"))


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_for_kuberay(name):
    docs = _docs(name)
    assert docs
    for doc in docs:
        assert validate.errors(doc) == [], (name, doc["kind"])


def _worker(doc: dict, group: str) -> dict:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    return next(g for g in spec["workerGroupSpecs"] if g["groupName"] == group)


def _set(path: str, value: Any, key: str | None = None) -> Callable[[dict], None]:
    """Set (or with KeyError delete) the field at dotted `path`; `key` names a last key that
    holds dots itself."""
    def apply(doc: dict) -> None:
        *parents, last = path.split(".") + ([key] if key else [])
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return apply


CLUSTER_BREAKS = {
    "misspelt field": _set("spec.enableInTreeAutoScaling", True),
    "int rayStartParam": _set("spec.headGroupSpec.rayStartParams.num-cpus", 0),
    "no maxReplicas": _set("spec.workerGroupSpecs.1.maxReplicas", KeyError),
    "replicas beyond int32": _set("spec.workerGroupSpecs.0.maxReplicas", 2**31),
    "bad quantity": _set("spec.workerGroupSpecs.1.template.spec.containers.0.resources.limits", "one",
                         key="nvidia.com/gpu"),
    "bad enum": _set("spec.autoscalerOptions.upscalingMode", "Fast"),
    "no head template": _set("spec.headGroupSpec.template", KeyError),
    "container without name": _set("spec.headGroupSpec.template.spec.containers.0.name", KeyError),
    "bad metadata.name": _set("metadata.name", "CapFilt_Cluster"),
    "wrong apiVersion": _set("apiVersion", "ray.io/v1alpha2"),
}
JOB_BREAKS = {
    "string bool": _set("spec.shutdownAfterJobFinishes", "yes"),
    "string ttl": _set("spec.ttlSecondsAfterFinished", "1h"),
    "runtimeEnv as mapping": _set("spec.runtimeEnvYAML", {"env_vars": {}}),
    "misspelt field": _set("spec.entryPoint", "python -m pipelines.bootstrap"),
    "nested unknown field": _set("spec.rayClusterSpec.workerGroupSpecs.0.minReplica", 0),
}


@pytest.mark.parametrize(
    "name, kind, breakage",
    [("raycluster.yaml", "RayCluster", b) for b in CLUSTER_BREAKS.values()]
    + [("rayjob-bootstrap.yaml", "RayJob", b) for b in JOB_BREAKS.values()],
    ids=[f"cluster-{k}" for k in CLUSTER_BREAKS] + [f"job-{k}" for k in JOB_BREAKS],
)
def test_broken_manifest_fails_validation(name, kind, breakage):
    doc = copy.deepcopy(_one(_docs(name), kind))
    breakage(doc)
    assert validate.errors(doc), "a broken manifest passed validation"


def test_validate_script_exit_code(tmp_path, capsys):
    assert validate.main([str(KUBERAY / n) for n in MANIFESTS]) == 0
    doc = _one(_docs("raycluster.yaml"), "RayCluster")
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    assert validate.main([str(tmp_path / "bad.yaml")]) == 1
    assert "num-cpus" in capsys.readouterr().out


def test_raycluster_shape():
    spec = _one(_docs("raycluster.yaml"), "RayCluster")["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert g["maxReplicas"] > g["minReplicas"], "a group that cannot scale"
    gpu_limits = [c["resources"]["limits"] for c in groups["gpu"]["template"]["spec"]["containers"]]
    assert all(int(lim["nvidia.com/gpu"]) >= 1 for lim in gpu_limits)
    assert all("nvidia.com/gpu" not in c["resources"].get("limits", {})
               for c in groups["cpu"]["template"]["spec"]["containers"])


def _containers(spec: dict):
    yield "head", spec["headGroupSpec"]["template"]["spec"]["containers"]
    for g in spec["workerGroupSpecs"]:
        yield g["groupName"], g["template"]["spec"]["containers"]


@pytest.mark.parametrize("name", ["raycluster.yaml", *JOBS])
def test_images_are_this_version_of_capfilt(name):
    doc = next(d for d in _docs(name) if d["kind"] in ("RayCluster", "RayJob"))
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    version = PYPROJECT["project"]["version"]
    for group, containers in _containers(spec):
        expected = f"capfilt:{version}" + ("-gpu" if group == "gpu" else "")
        assert [c["image"] for c in containers] == [expected], group


def _without_config_mount(spec: dict, configmap: str) -> dict:
    spec = copy.deepcopy(spec)
    pod = spec["headGroupSpec"]["template"]["spec"]
    names = {v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap}
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in names]
    for c in pod["containers"]:
        c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] not in names]
    return spec


def _config_path(name: str) -> tuple[dict, dict, str]:
    """(RayJob, ConfigMap, the --config path of the entrypoint) of one job file."""
    docs = _docs(name)
    job, cm = _one(docs, "RayJob"), _one(docs, "ConfigMap")
    argv = shlex.split(job["spec"]["entrypoint"])
    return job, cm, argv[argv.index("--config") + 1]


@pytest.mark.parametrize("name, module", JOBS.items())
def test_rayjob_runs_its_module_on_its_mounted_config(name, module):
    job, cm, config = _config_path(name)
    spec = job["spec"]
    assert shlex.split(spec["entrypoint"])[:3] == ["python", "-m", module]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    ray.runtime_env.RuntimeEnv(**env)  # raises on a field Ray does not know
    # the driver runs on the head: the ConfigMap must be mounted there, with the file in it
    pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])
              if volumes[m["name"]].get("configMap", {}).get("name") == cm["metadata"]["name"]]
    assert len(mounts) == 1, "config not mounted on the head"
    rel = os.path.relpath(config, mounts[0]["mountPath"])
    assert not rel.startswith(".."), f"{config} is not under {mounts[0]['mountPath']}"
    assert rel in cm["data"], f"{rel} not in ConfigMap {cm['metadata']['name']}"
    # the job's cluster is raycluster.yaml's, plus the config mount
    cluster = _one(_docs("raycluster.yaml"), "RayCluster")["spec"]
    assert _without_config_mount(spec["rayClusterSpec"], cm["metadata"]["name"]) == cluster


@pytest.mark.parametrize("module", sorted(set(JOBS.values())))
def test_job_entry_module_is_runnable(module):
    # what the RayJob's entrypoint runs, run the same way: `python -m <module> --help` must parse
    # the job's flags (a missing __main__ or a broken import fails here, not on the cluster)
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert f"python -m {module}" in out.stdout and "--output" in out.stdout, out.stdout
    bad = subprocess.run([sys.executable, "-m", module, "--a-flag-nobody-has"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    assert bad.returncode != 0 and "a-flag-nobody-has" in bad.stdout + bad.stderr


def _settings_model(module_name: str, preferred: str) -> type[BaseModel]:
    module = importlib.import_module(module_name)
    assert hasattr(module, preferred), f"{module_name} has no {preferred}"
    return getattr(module, preferred)


SETTINGS = {
    "rayjob-bootstrap.yaml": ("pipelines.bootstrap.settings", "BootstrapSettings"),
    "rayjob-rounds.yaml": ("pipelines.rounds.settings", "RoundsSettings"),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_configmap_is_valid_job_settings(name):
    model = _settings_model(*SETTINGS[name])
    job, cm, config = _config_path(name)
    values = yaml.safe_load(cm["data"][Path(config).name])
    values = {str(k).replace("-", "_"): v for k, v in values.items()}  # as the CLI reads YAML
    settings = model.model_validate(values)
    # paths the job reads or writes must be on the shared volume every pod mounts
    pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    shared = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
              if next(v for v in pod["volumes"] if v["name"] == m["name"]).get("persistentVolumeClaim")]
    for key, value in settings.model_dump().items():
        if isinstance(value, Path) and value.is_absolute():
            assert any(value.is_relative_to(s) for s in shared), f"{key}={value} not on {shared}"
    with pytest.raises(ValidationError, match="extra|forbid|not permitted"):
        model.model_validate({**values, "a_knob_nobody_has": 1})


def test_stored_crd_schemas_are_v1_and_extract_regenerates_them(tmp_path):
    source = (KUBERAY / "crds" / "SOURCE.md").read_text()
    assert re.search(r"\b[0-9a-f]{40}\b", source) and "Apache-2.0" in source
    for kind, file in validate.SCHEMA_FILES.items():
        schema = validate.crd_schema(kind)
        assert schema["properties"]["kind"]["type"] == "string" and "spec" in schema["properties"]
        # a CRD with two versions: extract takes v1, unchanged, to the name validate.py reads
        crd = {"kind": "CustomResourceDefinition",
               "spec": {"names": {"plural": file.split(".")[0]},
                        "versions": [{"name": "v1alpha1", "schema": {"openAPIV3Schema": {"type": "object"}}},
                                     {"name": "v1", "schema": {"openAPIV3Schema": schema}}]}}
        (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
        assert extract.main([str(tmp_path / "crd.yaml"), "--out", str(tmp_path)]) == 0
        assert (tmp_path / file).read_bytes() == (KUBERAY / "crds" / file).read_bytes()


@pytest.mark.skipif("KUBERAY_CRD_DIR" not in os.environ,
                    reason="set KUBERAY_CRD_DIR to a folder of KubeRay's CRD YAMLs to compare")
def test_stored_schemas_match_published_crds():
    for kind, file in validate.SCHEMA_FILES.items():
        crd = yaml.safe_load((Path(os.environ["KUBERAY_CRD_DIR"]) / f"ray.io_{file.split('.')[0]}.yaml").read_text())
        with gzip.open(KUBERAY / "crds" / file) as f:
            assert json.load(f) == extract.openapi_schema(crd, "v1")


# -- Ray cluster launcher ----------------------------------------------------------------------

def _launcher_schema() -> dict:
    return json.loads((importlib.resources.files("ray") / "autoscaler" / "ray-schema.json").read_text())


def _cluster() -> dict:
    return yaml.safe_load((DEPLOY / "cluster.yaml").read_text())


def test_cluster_launcher_config_is_valid():
    config = _cluster()
    jsonschema.validate(config, _launcher_schema())
    # and what `ray up` does with it: fill in the provider's defaults, validate again
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert config["head_node_type"] in types and {"cpu", "gpu"} <= set(types)
    assert types["head"]["resources"].get("CPU") == 0
    image, tag = config["docker"]["image"].split(":")
    assert image == "rayproject/ray" and _major_minor(tag) == _major_minor(ray.__version__)


def test_cluster_launcher_installs_this_checkout_torch_first():
    config = _cluster()
    [remote] = [r for r, local in config["file_mounts"].items() if local == "."]
    setup = config["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "pip install" in c and "torch" in c)
    project_at = next(i for i, c in enumerate(setup) if re.search(rf"pip install\b.*\s{re.escape(remote)}\b", c))
    assert torch_at < project_at
    assert {".venv", ".git", "out", "demo-out"} <= set(config["rsync_exclude"])


def test_cluster_launcher_turns_ray_token_auth_on_for_every_node():
    """Every node's container runs Ray with RAY_AUTH_MODE=token and reads the token from a file
    that file_mounts copies from where `ray up` runs; no start command turns it off."""
    config = _cluster()
    options = " ".join(config["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    path = re.search(r"--env RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    assert config["file_mounts"][path] == "~/.ray/auth_token"
    assert not any("worker_run_options" in t.get("docker", {}) for t in config["available_node_types"].values())
    commands = [c for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
                for c in config[key]]
    assert not any("RAY_AUTH_MODE" in c or "RAY_AUTH_TOKEN" in c for c in commands)


@pytest.mark.parametrize("name", ["raycluster.yaml", *JOBS])
def test_kuberay_clusters_turn_ray_token_auth_on(name):
    """The operator makes the token and sets it in every pod; no container overrides the mode."""
    doc = next(d for d in _docs(name) if d["kind"] in ("RayCluster", "RayJob"))
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    assert spec["authOptions"]["mode"] == "token"
    assert _major_minor(spec["rayVersion"]) >= (2, 52), "token authentication needs Ray 2.52"
    for group, containers in _containers(spec):
        for c in containers:
            assert not any(e["name"].startswith("RAY_AUTH") for e in c.get("env", [])), group


@pytest.mark.parametrize(
    "breakage",
    [
        _set("max_worker", 4),  # misspelt
        _set("provider", KeyError),
        _set("available_node_types.cpu.node_config", KeyError),
        _set("available_node_types.gpu.min_workers", "one"),
        _set("available_node_types.gpu.resources.GPU", -1),
        _set("setup_commands", "pip install ."),
        _set("docker.pull_before_run", "yes"),
    ],
)
def test_broken_cluster_launcher_config_fails(breakage):
    config = _cluster()
    breakage(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _launcher_schema())


# -- runtime_env for `ray job submit` ---------------------------------------------------------

def _runtime_env() -> dict:
    return yaml.safe_load((DEPLOY / "runtime_env.yaml").read_text())


def test_runtime_env_is_accepted_by_ray():
    env = _runtime_env()
    ray.runtime_env.RuntimeEnv(**env)
    ray.runtime_env.RuntimeEnv(working_dir=".", **env)  # what --working-dir . adds
    with pytest.raises(Exception):
        ray.runtime_env.RuntimeEnv(**{**env, "env_vars": {"A": 1}})  # values must be strings


def _package(directory: Path, out: Path) -> set[str]:
    """Zip `directory` as `ray job submit --working-dir` does, with only runtime_env.yaml's
    excludes (not .gitignore, which a checkout outside git may lack); the names in it."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    create_package(str(directory), out, include_gitignore=False, excludes=_runtime_env()["excludes"])
    return set(zipfile.ZipFile(out).namelist())


def test_runtime_env_excludes_keep_bulk_out(tmp_path):
    tree = tmp_path / "checkout"
    for rel in ("pipelines/bootstrap/run.py", "capfilt/cli.py", "pyproject.toml",
                ".venv/lib/torch.so", "out/world/img.png", "demo-out/shard-0.tar",
                ".git/objects/pack.pack", "capfilt/__pycache__/cli.cpython-311.pyc"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"x" * 1024)
    names = _package(tree, tmp_path / "pkg.zip")
    assert names == {"pipelines/bootstrap/run.py", "capfilt/cli.py", "pyproject.toml"}


def test_working_dir_upload_is_under_rays_limit(tmp_path):
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    _package(ROOT, tmp_path / "pkg.zip")
    limit = min(100 * 1024**2, GCS_STORAGE_MAX_SIZE)
    assert (tmp_path / "pkg.zip").stat().st_size < limit
