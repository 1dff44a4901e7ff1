"""Contract tests for the deployment files: docker/, docker/k8s/, serving/config.yaml, docs/deploy.md.

Nothing here builds an image or starts a container (the development machines have no Docker engine and
no GPU). The files are parsed and checked against each other and against the code they name:

* every YAML parses; every image is pinned (a tag, never ``latest``);
* the GPU compose file reserves an NVIDIA device for Milvus and the Ray GPU worker, the CPU one none;
* ports agree between the compose services, their health checks, the Serve deploy command, the
  Milvus URI handed to the app and Serve's port 8000; the k8s manifests expose the same ports;
* serving/config.yaml validates against Ray's own ``ServeDeploySchema`` and the RayService's
  ``serveConfigV2`` holds exactly its ``applications``;
* every place that starts the app uses ``serving:build_app`` (args within the builder's documented
  args, no secrets) or ``serving:app``;
* the RayJob runs ``python -m training --config training/configs/<name>.yaml`` with a config that
  exists and, with its overrides, loads through ``training.config.load_config``;
* the GPU index types named in the Helm values, the compose files and docs/deploy.md are the ones of
  the ``gpu`` profile in schemas/profiles.yaml;
* the Ray image versions and KubeRay ``rayVersion`` equal the installed ``ray.__version__``;
* ``docker compose config`` accepts both compose files where the compose plugin exists.

Run ``python tests/unit/test_deploy_files.py --sync`` to copy serving/config.yaml's applications
into docker/k8s/rayservice.yaml after editing the former.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray import serve
from ray.serve.schema import ServeDeploySchema

from hivlp_milvus.profiles import load_profile, profile_variants
from serving import AppArgs
from training.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
COMPOSE_CPU = DOCKER / "docker-compose.yml"
RAYJOB = K8S / "rayjob-train.yaml"
RAYSERVICE = K8S / "rayservice.yaml"
HELM_VALUES = K8S / "milvus-values-gpu.yaml"
SERVE_CONFIG = ROOT / "serving" / "config.yaml"
TRAINING_CONFIGS = ROOT / "training" / "configs"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PYPROJECT_TEXT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
DOCKERFILE_TEXT = DOCKERFILE.read_text(encoding="utf-8")

YAML_FILES = [COMPOSE_GPU, COMPOSE_CPU, RAYJOB, RAYSERVICE, HELM_VALUES, SERVE_CONFIG]
COMPOSE_FILES = [COMPOSE_GPU, COMPOSE_CPU]
KUBE_FILES = [RAYJOB, RAYSERVICE]

# The contract of the Serve app (serving/): two import paths, and the builder's documented args.
IMPORT_PATHS = {"serving:build_app", "serving:app"}


BUILDER_ARGS = set(AppArgs.model_fields)
SECRET_ARGS = {"milvus_token", "api_key"}
DEPLOYMENTS = {"TextEncoder", "ImageEncoder", "Searcher", "Ingress"}
SERVE_PORT = 8000  # Ray Serve's default HTTP port; the app, the probes and the manifests use it
MILVUS_PORT = 19530
MILVUS_HEALTH_PORT = 9091
SECRET_ENV = ("HIVLP_API_KEY", "HIVLP_MILVUS_TOKEN")

# `serve run` / `serve deploy` options that take a value (so the value is not the import path).
_SERVE_VALUE_OPTIONS = {
    "-a", "--address", "--name", "--runtime-env", "--runtime-env-json", "--working-dir",
    "-d", "--app-dir", "--route-prefix",
}  # fmt: skip


# -- helpers -----------------------------------------------------------------------------------


def _docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _doc(path: Path) -> Any:
    docs = _docs(path)
    assert len(docs) == 1, f"{path.relative_to(ROOT)}: expected one YAML document, found {len(docs)}"
    return docs[0]


def _services(path: Path) -> dict[str, dict[str, Any]]:
    return _doc(path)["services"]


def _ray_cluster(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig")


def _groups(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The head group and every worker group of a RayJob / RayService."""
    cluster = _ray_cluster(manifest)
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


def _pod_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs of a RayJob / RayService (head + every worker group)."""
    return [group["template"]["spec"] for group in _groups(manifest)]


def _containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for pod in _pod_specs(manifest) for c in pod["containers"]]


def _worker_gpus(cluster: dict[str, Any]) -> list[tuple[int, int]]:
    """(replicas, nvidia.com/gpu limit) of every container of every worker group."""
    return [
        (int(group["replicas"]), int(c["resources"]["limits"]["nvidia.com/gpu"]))
        for group in cluster["workerGroupSpecs"]
        for c in group["template"]["spec"]["containers"]
    ]


def _command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _ports(service: dict[str, Any]) -> dict[int, int | None]:
    """container port -> published host port (None when not published); the files use compose's long syntax."""
    return {int(p["target"]): int(p["published"]) if "published" in p else None for p in service.get("ports", [])}


def _image_ref(image: str) -> tuple[str, str]:
    """(repository, tag) of an image reference (a digest dropped); tag '' when there is none."""
    repo, tag = re.fullmatch(r"([^@]*?)(?::([^:/@]*))?(?:@.*)?", image).groups(default="")
    return repo, tag


def _dockerfile_default_base() -> str:
    match = re.search(r"^ARG\s+RAY_IMAGE=(\S+)", DOCKERFILE_TEXT, re.MULTILINE)
    assert match, "docker/Dockerfile must declare `ARG RAY_IMAGE=<pinned rayproject/ray tag>`"
    assert re.search(r"^FROM\s+\$\{?RAY_IMAGE\}?\s*$", DOCKERFILE_TEXT, re.MULTILINE), "FROM must use ${RAY_IMAGE}"
    return match.group(1)


def _all_images() -> list[tuple[str, str, str, str]]:
    """(where, image, repository, tag) for every image any deployment file names (tag as in ``_image_ref``)."""
    images = [("docker/Dockerfile ARG RAY_IMAGE", _dockerfile_default_base())]
    for path in COMPOSE_FILES:
        for name, service in _services(path).items():
            where = f"{path.name}:{name}"
            if "image" in service:
                images.append((where, service["image"]))
            base = ((service.get("build") or {}).get("args") or {}).get("RAY_IMAGE")
            if base:
                images.append((f"{where} build.args.RAY_IMAGE", base))
    images += [(f"{path.name}:{c['name']}", c["image"]) for path in KUBE_FILES for c in _containers(_doc(path))]
    helm = _doc(HELM_VALUES)["image"]["all"]
    images.append((f"{HELM_VALUES.name}:image.all", f"{helm['repository']}:{helm['tag']}"))
    return [(where, image, *_image_ref(image)) for where, image in images]


def _serve_invocations(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(verb, target, key=value args) of every `serve run|deploy` command in a text."""
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    found = []
    for segment in re.split(r"&&|\|\||;|\n|`", text):
        try:
            words = shlex.split(segment, comments=False)
        except ValueError:
            continue
        for i in range(len(words) - 1):
            if words[i] != "serve" or words[i + 1] not in ("run", "deploy"):
                continue
            rest, positional = iter(words[i + 2 :]), []
            for word in rest:
                if word in _SERVE_VALUE_OPTIONS:
                    next(rest, None)  # the option's value
                elif not word.startswith("-"):
                    positional.append(word)
            if positional:
                args = dict(p.split("=", 1) for p in positional[1:] if "=" in p)
                found.append((words[i + 1], positional[0], args))
    return found


def _builder_deployment_names() -> set[str]:
    """The names of the Serve deployments the modules of serving/ define."""
    modules = [importlib.import_module(f"serving.{path.stem}") for path in (ROOT / "serving").glob("[!_]*.py")]
    return {obj.name for module in modules for obj in vars(module).values() if isinstance(obj, serve.Deployment)}


def _rayservice_applications(path: Path = RAYSERVICE) -> list[dict[str, Any]]:
    serve_config = yaml.safe_load(_doc(path)["spec"]["serveConfigV2"])
    return serve_config["applications"]


def sync_rayservice(serve_config: Path = SERVE_CONFIG, rayservice: Path = RAYSERVICE) -> bool:
    """Rewrite the ``serveConfigV2`` block of ``rayservice`` from ``serve_config``'s applications.

    Only the lines of that block change; comments elsewhere stay. Returns whether the file changed.
    """
    apps = yaml.safe_load(serve_config.read_text(encoding="utf-8"))["applications"]
    lines = rayservice.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if re.match(r"^\s*serveConfigV2:\s*\|[-+]?\s*$", line))
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    body = yaml.safe_dump({"applications": apps}, sort_keys=False, default_flow_style=False, width=100)
    block = [(" " * (indent + 2) + line) if line.strip() else line for line in body.splitlines(keepends=True)]
    new = lines[: start + 1] + block + lines[end:]
    if new == lines:
        return False
    rayservice.write_text("".join(new), encoding="utf-8")
    return True


def _rayjob_training_command() -> tuple[str, list[str]]:
    entrypoint = _doc(RAYJOB)["spec"]["entrypoint"]
    for segment in re.split(r"&&|;", entrypoint):
        words = shlex.split(segment)
        if words[:3] == ["python", "-m", "training"]:
            assert "--config" in words, f"RayJob entrypoint runs training without --config: {entrypoint!r}"
            config = words[words.index("--config") + 1]
            overrides = [w for w in words[3:] if "=" in w and not w.startswith("-")]
            return config, overrides
    raise AssertionError(f"RayJob entrypoint does not run `python -m training`: {entrypoint!r}")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# -- every file parses, every image is pinned ----------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_every_image_is_pinned() -> None:
    for where, image, repo, tag in _all_images():
        assert tag, f"{where}: image {image!r} has no tag; pin an exact version"
        assert not re.search("latest|nightly", tag), f"{where}: {image!r} is a moving tag"
        assert "${" not in image, f"{where}: image {image!r} must be literal, not interpolated"
        assert re.search(r"\d", tag), f"{where}: tag {tag!r} of {repo} names no version"


def test_project_images_carry_package_and_ray_version() -> None:
    project_version = re.search(r'^version\s*=\s*"([^"]+)"', PYPROJECT_TEXT, re.MULTILINE).group(1)
    for where, image, repo, tag in _all_images():
        if repo.rsplit("/", 1)[-1] != "hivlp-milvus":
            continue
        assert tag.startswith(f"{project_version}-ray{ray.__version__}-"), (
            f"{where}: project image {image!r} should be tagged "
            f"{project_version}-ray{ray.__version__}-<gpu|cpu> (pyproject version, Ray inside)"
        )


# -- Ray versions ----------------------------------------------------------------------------


def test_ray_versions_match_installed_ray() -> None:
    for where, image, repo, tag in _all_images():
        if repo == "rayproject/ray":
            assert tag.split("-")[0] == ray.__version__, (
                f"{where}: {image!r} but the project is tested with ray {ray.__version__}"
            )
    for path in KUBE_FILES:
        assert str(_ray_cluster(_doc(path))["rayVersion"]) == ray.__version__, (
            f"{path.name}: rayVersion must equal the Ray in the image ({ray.__version__})"
        )


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_contract() -> None:
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE_TEXT, re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    assert users[-1] in ("ray", "1000"), "the image must end as the non-root `ray` user"
    assert re.search(r"^WORKDIR\s+/\S+", DOCKERFILE_TEXT, re.MULTILINE), "set an absolute WORKDIR"
    assert re.search(r"pip install[^\n]*\s\.(\s|$)", DOCKERFILE_TEXT), "the image must `pip install .` the project"
    # Every package the distribution ships is copied in, and every COPY source exists.
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", PYPROJECT_TEXT).group(1)
    packages = {p.strip().strip('"').rstrip("*") for p in include.split(",") if p.strip()}
    copies = [
        [w for w in line.split() if not w.startswith("--")]
        for line in re.findall(r"^COPY\s+(.+)$", DOCKERFILE_TEXT, re.MULTILINE)
    ]
    copied = {source for words in copies for source in words[:-1]}  # the last word is the destination
    assert packages <= copied, f"Dockerfile does not COPY packages {sorted(packages - copied)}"
    for source in copied:  # README.md included: pyproject's `readme` makes `pip install .` read it
        assert (ROOT / source).exists(), f"Dockerfile copies {source!r}, which does not exist"
    # No secret baked into the image.
    for name in re.findall(r"^(?:ENV|ARG)\s+([A-Za-z_]+)", DOCKERFILE_TEXT, re.MULTILINE):
        assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET", name, re.IGNORECASE), f"Dockerfile sets {name}"
    assert "HIVLP_API_KEY" not in DOCKERFILE_TEXT
    assert "HIVLP_MILVUS_TOKEN" not in DOCKERFILE_TEXT


def test_dockerfile_torch_pins_satisfy_pyproject() -> None:
    torch_lines = re.findall(r'^\s*"((?:torch|torchvision)(?:[^\w"-][^"]*)?)"', PYPROJECT_TEXT, re.MULTILINE)
    deps = {req.name: req.specifier for req in map(Requirement, torch_lines)}
    pins = re.findall(r'"(torch|torchvision)==([^"]+)"', DOCKERFILE_TEXT)
    assert pins, "Dockerfile pins no torch/torchvision for the optional TORCH_INDEX_URL path"
    for name, version in pins:
        assert version in deps[name], f"Dockerfile pins {name}=={version}, outside pyproject's {name}{deps[name]}"


# -- compose -----------------------------------------------------------------------------------


def _milvus_service(services: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    found = [(n, s) for n, s in services.items() if str(s.get("image", "")).startswith("milvusdb/milvus:")]
    assert len(found) == 1, f"expected one Milvus service, found {[n for n, _ in found]}"
    return found[0]


def _ray_head(services: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    found = [(n, s) for n, s in services.items() if "ray start --head" in _command_text(s)]
    assert len(found) == 1, "expected one service running `ray start --head`"
    return found[0]


def _nvidia_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def test_gpu_compose_reserves_nvidia_devices() -> None:
    services = _services(COMPOSE_GPU)
    name, milvus = _milvus_service(services)
    assert _image_ref(milvus["image"])[1].endswith("-gpu"), f"{name} must run the -gpu Milvus image"
    assert _nvidia_devices(milvus), f"{name}: reserve an nvidia device (deploy.resources.reservations)"
    workers = [s for s in services.values() if "ray start --address" in _command_text(s)]
    assert workers, "no Ray worker service"
    for worker in workers:
        assert _nvidia_devices(worker), "the Ray GPU worker must reserve an nvidia device"
        gpus = re.search(r"--num-gpus[= ](\d+)", _command_text(worker))
        assert gpus, "the Ray GPU worker must pass --num-gpus"
        assert int(gpus.group(1)) >= 1, "the Ray GPU worker must offer >= 1 GPU to Ray"
    assert "--num-gpus=0" in _command_text(_ray_head(services)[1]), "keep GPU work off the head"


def test_cpu_compose_needs_no_gpu() -> None:
    services = _services(COMPOSE_CPU)
    _milvus_service(services)  # the check below covers the Milvus image too
    for name, service in services.items():
        assert not _nvidia_devices(service), f"{COMPOSE_CPU.name}:{name} reserves a GPU"
        assert "-gpu" not in str(service.get("image", "")), f"{COMPOSE_CPU.name}:{name} uses a GPU image"


def test_milvus_versions_agree() -> None:
    gpu_tag = _image_ref(_milvus_service(_services(COMPOSE_GPU))[1]["image"])[1]
    cpu_tag = _image_ref(_milvus_service(_services(COMPOSE_CPU))[1]["image"])[1]
    helm_tag = _doc(HELM_VALUES)["image"]["all"]["tag"]
    assert gpu_tag == f"{cpu_tag}-gpu" == helm_tag, (gpu_tag, cpu_tag, helm_tag)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_health_checks_and_volumes(path: Path) -> None:
    data = _doc(path)
    declared = set(data.get("volumes") or {})
    for name, service in data["services"].items():
        test = (service.get("healthcheck") or {}).get("test")
        assert test, f"{path.name}:{name} has no health check"
        assert test != ["NONE"], f"{path.name}:{name} disables its health check"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "$", "~")):
                assert source in declared, f"{path.name}:{name} mounts undeclared volume {source!r}"
    _, milvus = _milvus_service(data["services"])
    assert any("/var/lib/milvus" in str(v) for v in milvus.get("volumes", [])), "Milvus data not on a volume"
    for dependency in ("etcd", "minio"):
        assert dependency in milvus.get("depends_on", {}), f"Milvus must wait for {dependency}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_ports_are_consistent(path: Path) -> None:
    services = _services(path)
    milvus_name, milvus = _milvus_service(services)
    milvus_ports = _ports(milvus)
    assert milvus_ports.get(MILVUS_PORT) == MILVUS_PORT
    assert milvus_ports.get(MILVUS_HEALTH_PORT) == 9091
    assert f":{MILVUS_HEALTH_PORT}/healthz" in " ".join(milvus["healthcheck"]["test"])

    head_name, head = _ray_head(services)
    head_cmd = _command_text(head)
    gcs_port = int(re.search(r"--port[= ](\d+)", head_cmd).group(1))
    dash_port = int(re.search(r"--dashboard-port[= ](\d+)", head_cmd).group(1))
    head_ports = _ports(head)
    assert head_ports.get(dash_port) == dash_port == 8265, "publish the dashboard on 8265"
    assert head_ports.get(SERVE_PORT) == SERVE_PORT, f"{head_name} must publish Serve's port {SERVE_PORT}"
    assert head_ports.get(gcs_port) is None, "do not publish the GCS port (no authentication)"
    assert f":{dash_port}/" in " ".join(head["healthcheck"]["test"])

    for name, service in services.items():
        command = _command_text(service)
        for host, port in re.findall(r"ray start --address[= ]([\w.-]+):(\d+)", command):
            assert (host, int(port)) == (head_name, gcs_port), f"{name} joins {host}:{port}"

    serve = [s for s in services.values() if _serve_invocations(_command_text(s))]
    assert len(serve) == 1, "expected one service that deploys the Serve app"
    serve_cmd = _command_text(serve[0])
    address = urlparse(re.search(r"--address[= ](\S+)", serve_cmd).group(1))
    assert (address.hostname, address.port) == (head_name, dash_port)
    probe = " ".join(serve[0]["healthcheck"]["test"])
    url = urlparse(re.search(r"https?://[^'\" ]+", probe).group(0))
    assert (url.hostname, url.port, url.path) == (head_name, SERVE_PORT, "/healthz")

    for name, service in services.items():
        uri = (
            (service.get("environment") or {}).get("HIVLP_MILVUS_URI")
            if isinstance(service.get("environment"), dict)
            else None
        )
        if uri:
            parsed = urlparse(uri)
            assert (parsed.hostname, parsed.port) == (milvus_name, MILVUS_PORT), f"{name}: {uri}"


def test_serve_config_listens_on_serve_port() -> None:
    http = _doc(SERVE_CONFIG).get("http_options") or {}
    assert int(http.get("port", SERVE_PORT)) == SERVE_PORT
    assert http.get("host", "0.0.0.0") == "0.0.0.0", "inside a container Serve must bind all interfaces"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_secrets_come_from_the_environment(path: Path) -> None:
    for name, service in _services(path).items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key in SECRET_ENV:
            if key in env:
                assert str(env[key]).startswith("${"), f"{path.name}:{name} hard-codes {key}"


def test_docker_compose_config_accepts_both_files() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker client is not installed, so `docker compose config` cannot run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()
        pytest.skip(
            "the docker compose plugin is not installed (`docker compose version` failed: "
            f"{reason[0] if reason else probe.returncode}); `docker compose config` cannot run"
        )
    env = {**os.environ, "HIVLP_API_KEY": "test-key"}
    for path in COMPOSE_FILES:
        result = subprocess.run(
            [docker, "compose", "-f", str(path), "--profile", "serve", "config", "--quiet"],
            capture_output=True, text=True, timeout=120, env=env, cwd=DOCKER,
        )  # fmt: skip
        assert result.returncode == 0, f"docker compose config {path.name}:\n{result.stderr}"


# -- the Serve app -----------------------------------------------------------------------------


def test_serve_config_validates_against_ray_schema() -> None:
    ServeDeploySchema.model_validate(_doc(SERVE_CONFIG))
    ServeDeploySchema.model_validate({"applications": _rayservice_applications()})


def test_serve_config_shape() -> None:
    apps = _doc(SERVE_CONFIG)["applications"]
    assert [a["name"] for a in apps] == ["hivlp"]
    app = apps[0]
    assert app["import_path"] == "serving:build_app"
    assert app["route_prefix"] == "/"
    names = {d["name"] for d in app.get("deployments", [])}
    assert names == DEPLOYMENTS, f"deployments {sorted(names)}; the contract is {sorted(DEPLOYMENTS)}"


def test_serve_config_deployments_exist_in_serving_code() -> None:
    defined = _builder_deployment_names()
    named = {d["name"] for a in _doc(SERVE_CONFIG)["applications"] for d in a.get("deployments", [])}
    assert named <= defined, (
        f"serving/config.yaml configures {sorted(named - defined)}, which serving/ does not define "
        f"(it defines {sorted(defined)}); Serve rejects options for unknown deployments"
    )


def test_rayservice_serves_exactly_serving_config() -> None:
    expected = _doc(SERVE_CONFIG)["applications"]
    assert _rayservice_applications() == expected, (
        "docker/k8s/rayservice.yaml's serveConfigV2 differs from serving/config.yaml's applications; "
        "run `python tests/unit/test_deploy_files.py --sync` to copy them over"
    )


def test_sync_rewrites_only_the_serve_config_block(tmp_path: Path) -> None:
    config = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    config["applications"][0]["deployments"][0]["max_ongoing_requests"] = 7
    edited_config = tmp_path / "config.yaml"
    edited_config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    rayservice = tmp_path / "rayservice.yaml"
    shutil.copy(RAYSERVICE, rayservice)
    assert sync_rayservice(edited_config, rayservice)
    assert _rayservice_applications(rayservice) == config["applications"]
    before, after = _doc(RAYSERVICE), _doc(rayservice)
    before["spec"].pop("serveConfigV2")
    after["spec"].pop("serveConfigV2")
    assert before == after, "sync must leave everything but serveConfigV2 alone"
    assert not sync_rayservice(edited_config, rayservice), "a second sync must be a no-op"


def _app_invocations() -> list[tuple[str, str, dict[str, Any]]]:
    """(where, import path, args) for every place that starts the app."""
    apps = {"serving/config.yaml": _doc(SERVE_CONFIG)["applications"], "rayservice.yaml": _rayservice_applications()}
    out = [(where, app["import_path"], app.get("args") or {}) for where, listed in apps.items() for app in listed]
    texts = {p.name: _command_text(s) for p in COMPOSE_FILES for s in _services(p).values()}
    for extra in (DEPLOY_DOC, DOCKER / "README.md", ROOT / "README.md", ROOT / "Makefile"):
        if extra.exists():
            texts[str(extra.relative_to(ROOT))] = extra.read_text(encoding="utf-8")
    for where, text in texts.items():
        for verb, target, args in _serve_invocations(text):
            if target.endswith((".yaml", ".yml")):
                assert (ROOT / target).is_file(), f"{where}: `serve {verb} {target}`: no such config"
                continue
            out.append((where, target, args))
    return out


def test_app_import_paths_and_args() -> None:
    invocations = _app_invocations()
    assert any(w.endswith(".yml") for w, _, _ in invocations), "no compose service starts the app"
    for where, target, args in invocations:
        assert target in IMPORT_PATHS, f"{where}: starts {target!r}; use one of {sorted(IMPORT_PATHS)}"
        if target == "serving:app":
            assert not args, f"{where}: serving:app is a built app and takes no args"
        unknown = set(args) - BUILDER_ARGS
        assert not unknown, f"{where}: {sorted(unknown)} are not serving:build_app args {sorted(BUILDER_ARGS)}"
        if where.endswith((".yaml", ".yml")):
            leaked = set(args) & SECRET_ARGS
            assert not leaked, f"{where}: pass {sorted(leaked)} via HIVLP_* environment, not in a file"


# -- Kubernetes --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUBE_FILES, ids=lambda p: p.name)
def test_kuberay_manifest_basics(path: Path) -> None:
    manifest = _doc(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == {RAYJOB: "RayJob", RAYSERVICE: "RayService"}[path]
    cluster = _ray_cluster(manifest)
    head = cluster["headGroupSpec"]
    assert str(head["rayStartParams"].get("num-gpus")) == "0", "keep GPU work off the head"
    ports = {p["containerPort"]: p.get("name") for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports.get(6379) == "gcs-server"
    assert ports.get(8265) == "dashboard"
    if manifest["kind"] == "RayService":
        assert ports.get(SERVE_PORT) == "serve", "the RayService head must expose Serve's port 8000"
    gpus = _worker_gpus(cluster)
    assert gpus, "no worker group"
    assert all(g >= 1 for _, g in gpus), "every worker group needs nvidia.com/gpu limits"
    # Every pod mounts the shared volume at the same place.
    for pod in _pod_specs(manifest):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert set(claims.values()) == {"hivlp-shared"}
        for container in pod["containers"]:
            mounts = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims}
            assert mounts == {"/mnt/shared"}, f"{path.name}:{container['name']} mounts {mounts}"


def test_rayservice_environment() -> None:
    for container in _containers(_doc(RAYSERVICE)):
        env = _env(container)
        for key in SECRET_ENV:
            assert "secretKeyRef" in (env[key].get("valueFrom") or {}), f"{key} must come from a Secret"
            assert "value" not in env[key]
        uri = urlparse(env["HIVLP_MILVUS_URI"]["value"])
        assert uri.port == MILVUS_PORT
        assert uri.scheme in ("http", "https")
        helm_port = (_doc(HELM_VALUES).get("service") or {}).get("port", MILVUS_PORT)
        assert uri.port == helm_port, "HIVLP_MILVUS_URI must use the Milvus Helm service port"
        assert env["HIVLP_CHECKPOINT"]["value"].startswith("/mnt/shared/")


def test_rayjob_runs_a_shipped_training_config() -> None:
    config, overrides = _rayjob_training_command()
    assert re.fullmatch(r"training/configs/[\w-]+\.yaml", config), f"RayJob --config {config!r}"
    keys = dict(o.split("=", 1) for o in overrides)
    assert keys.get("run.storage_path", "").startswith("/mnt/shared/"), (
        "multi-node Ray Train needs run.storage_path on the shared volume (/mnt/shared)"
    )
    if keys.get("scaling.use_gpu", "").lower() == "true":
        offered = sum(replicas * gpus for replicas, gpus in _worker_gpus(_ray_cluster(_doc(RAYJOB))))
        assert int(keys["scaling.num_workers"]) == offered, "one Ray Train worker per GPU the cluster has"
    # The model the RayJob exports is the one the RayService serves.
    served = {_env(c)["HIVLP_CHECKPOINT"]["value"] for c in _containers(_doc(RAYSERVICE))}
    assert served == {keys["run.work_dir"].rstrip("/") + "/model"}, (served, keys.get("run.work_dir"))

    shipped = sorted(p.stem for p in TRAINING_CONFIGS.glob("*.yaml"))
    assert (ROOT / config).is_file(), f"RayJob uses {config}; training/configs/ has only {shipped}"
    load_config(ROOT / config, overrides)  # raises ConfigError on a bad key/value


def test_helm_values_put_gpus_on_query_and_data_nodes() -> None:
    values = _doc(HELM_VALUES)
    assert values["cluster"]["enabled"] is True
    for component in ("queryNode", "dataNode"):
        limits = values[component]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, f"{component} needs a GPU (search / GPU index builds)"
    user_yaml = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    assert user_yaml["common"]["security"]["authorizationEnabled"] is True


# -- index types -------------------------------------------------------------------------------


def test_gpu_index_types_match_profiles() -> None:
    variants = set(profile_variants("gpu"))
    assert variants, "the gpu profile names no vec_low index"
    gpu = load_profile("gpu")
    assert gpu.high.index_type == "FLAT", "gpu profile's vec_high must be FLAT"

    named = {
        str(path.relative_to(ROOT)): set(re.findall(r"\bGPU_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
        for path in (HELM_VALUES, COMPOSE_GPU, COMPOSE_CPU, DEPLOY_DOC, DOCKER / "README.md")
    }
    for where, tokens in named.items():
        assert tokens <= variants, (
            f"{where} names {sorted(tokens - variants)}, not in the gpu profile {sorted(variants)}"
        )
    assert named["docs/deploy.md"] == variants, "docs/deploy.md must explain every gpu vec_low variant"
    assert named["docker/k8s/milvus-values-gpu.yaml"] == variants

    declared = _doc(COMPOSE_GPU)["x-hivlp-index-profile"]
    assert declared["profile"] == "gpu"
    assert set(declared["vec_low"]) == variants
    assert declared["vec_high"] == "FLAT"
    assert declared["vec_low_default"] == gpu.variant


def test_cpu_compose_index_types_match_profiles() -> None:
    declared = _doc(COMPOSE_CPU)["x-hivlp-index-profile"]
    assert declared["profile"] == "cpu"
    assert set(declared["vec_low"]) <= set(profile_variants("cpu")), f"{declared['vec_low']} not all in the cpu profile"


# -- docs --------------------------------------------------------------------------------------

_DOC_FILE_REF = re.compile(r"`((?:docker|serving|schemas|tests)/[\w./-]+\.(?:yml|yaml|py|md)|docker/Dockerfile)`")


def test_deploy_doc_references_existing_files() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for ref in sorted(set(_DOC_FILE_REF.findall(text))):
        assert (ROOT / ref).exists(), f"docs/deploy.md mentions {ref}, which does not exist"
    for path in [*COMPOSE_FILES, *KUBE_FILES, HELM_VALUES, DOCKERFILE]:
        assert str(path.relative_to(ROOT)) in text, f"docs/deploy.md does not mention {path.relative_to(ROOT)}"
    for heading in ("Laptop", "GPU box", "Cluster", "Sizing"):
        assert re.search(rf"^#+ .*{heading}", text, re.MULTILINE | re.IGNORECASE), f"no {heading} section"


def test_deploy_doc_lists_every_builder_argument() -> None:
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    missing = sorted(arg for arg in BUILDER_ARGS if f"`{arg}`" not in text)
    assert not missing, f"docs/deploy.md does not list the serving:build_app args {missing}"


# -- shared memory vs Ray's object store -----------------------------------------------------------

_BYTES_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}
_KUBE_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def _compose_default(value: str) -> str:
    """``${NAME:-default}`` -> ``default`` (what compose uses when the variable is unset)."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value.strip())
    return match.group(1) if match else value.strip()


def _bytes(text: str, units: dict[str, int]) -> int:
    """``text`` (a number and a unit of ``units``) in bytes; docker's units are case-blind, give them lower-cased."""
    number, unit = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", str(text)).groups()
    return int(number) * units[unit]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_object_store_fits_in_shm(path: Path) -> None:
    # Unset, Ray takes 30 % of the host's RAM for its object store: more than any fixed shm_size on
    # a large host, and then it silently falls back to /tmp. Every node must set it, below shm.
    for name, service in _services(path).items():
        command = _command_text(service)
        if "ray start" not in command:
            continue
        match = re.search(r"--object-store-memory[= ](\S+)", command)
        assert match, f"{path.name}:{name}: `ray start` without --object-store-memory (Ray would take 30 % of RAM)"
        store = int(_compose_default(match.group(1)))
        shm = _bytes(_compose_default(str(service.get("shm_size", "64m"))).lower(), _BYTES_UNITS)
        assert store < shm, f"{path.name}:{name}: object store {store} B does not fit shm_size {shm} B"


@pytest.mark.parametrize("path", KUBE_FILES, ids=lambda p: p.name)
def test_kuberay_object_store_fits_in_dshm(path: Path) -> None:
    for group in _groups(_doc(path)):
        name = group.get("groupName", "head")
        store = group["rayStartParams"].get("object-store-memory")
        assert store is not None, f"{path.name}:{name}: no object-store-memory (Ray would take 30 % of the pod)"
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        mounts = [m for c in group["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])]
        shm = next(volumes[m["name"]] for m in mounts if m["mountPath"] == "/dev/shm")
        limit = _bytes(shm["emptyDir"]["sizeLimit"], _KUBE_UNITS)
        assert int(store) < limit, f"{path.name}:{name}: object store {store} B does not fit /dev/shm {limit} B"
        memory = min(
            _bytes(c["resources"]["limits"]["memory"], _KUBE_UNITS) for c in group["template"]["spec"]["containers"]
        )
        # A Memory emptyDir counts against the pod's memory limit: the store's pages are the pod's.
        assert limit < memory, f"{path.name}:{name}: /dev/shm {limit} B is not below the pod's memory {memory} B"


# -- CI: the browser test cannot skip ------------------------------------------------------------

E2E_CONFTEST = ROOT / "tests" / "e2e" / "conftest.py"
CI_RUN = ROOT / ".ci" / "run"


def test_ci_requires_the_browser_test() -> None:
    text = CI_RUN.read_text(encoding="utf-8")
    assert "export HIVLP_REQUIRE_BROWSER=1" in text
    assert text.index("export HIVLP_REQUIRE_BROWSER=1") < text.index("\nmake test")


@pytest.mark.parametrize(("required", "expected"), [("1", "1 error"), ("", "1 skipped")])
def test_e2e_skips_fail_when_the_browser_is_required(tmp_path: Path, required: str, expected: str) -> None:
    # The real conftest next to a test that skips the way tests/e2e/test_web_page.py does without Chromium.
    (tmp_path / "conftest.py").write_text(E2E_CONFTEST.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "test_page.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef site():\n    pytest.skip('chromium is not installed')\n\n"
        "def test_page(site):\n    pass\n",
        encoding="utf-8",
    )
    env = {**os.environ, "HIVLP_REQUIRE_BROWSER": required}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert expected in out.stdout, out.stdout
    # A skip in a fixture becomes an error at setup: pytest exits 1 either way, so CI fails.
    assert out.returncode == (1 if required else 0)
    if required:
        assert "it skipped: Skipped: chromium is not installed" in out.stdout


if __name__ == "__main__":
    if sys.argv[1:] == ["--sync"]:
        changed = sync_rayservice()
        print(f"{RAYSERVICE.relative_to(ROOT)}: {'updated' if changed else 'already in sync'}")
        sys.exit(0)
    print(__doc__)
    sys.exit(2)
