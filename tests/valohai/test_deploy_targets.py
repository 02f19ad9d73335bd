"""Checks of the deployment targets: deploy/Dockerfile with deploy/constraints.txt and
.dockerignore, the Kubernetes manifests in deploy/kubernetes, and the docs that describe them."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = REPO
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "deploy" / "kubernetes"
DOCS = [ROOT / "docs" / name for name in ("dask-cluster.md", "docker.md", "kubernetes.md")]

SOURCE_PATH = "/mnt/raw-images"
IMAGE_UID = 10001
ROLES = ("scheduler", "worker", "driver")
JOB_PARAMS = {"--size", "--quality"}  # parameters of jobs/resize_images.py, not CLI options
PINNED_IMAGE = re.compile(
    r"^(?:[\w.-]+(?::\d+)?/)*[\w.-]+:\d+\.\d+\.\d+(?:-[\w.-]+)?(?:@sha256:[0-9a-f]{64})?$"
)
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|clang|cmake)\b")


# --- helpers: manifests ------------------------------------------------------------------


@functools.cache
def _manifests() -> tuple[tuple[Path, dict[str, Any]], ...]:
    found = []
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                found.append((path, doc))
    return tuple(found)


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [doc for path, doc in _manifests() if doc["kind"] == kind and path.parent == K8S_DIR]
    return doc


def _named(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in _manifests() if doc["kind"] == kind and _name(doc) == name]
    return doc


def _name(doc: dict[str, Any]) -> str:
    return str(doc.get("metadata", {}).get("name", ""))


def _role_pods() -> dict[str, dict[str, Any]]:
    cluster, job = _one("DaskCluster"), _one("Job")
    return {
        "scheduler": cluster["spec"]["scheduler"]["spec"],
        "worker": cluster["spec"]["worker"]["spec"],
        "driver": job["spec"]["template"]["spec"],
    }


def _all_pods() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, doc in _manifests():
        where = f"{path.relative_to(ROOT)} {doc['kind']}/{_name(doc)}"
        if doc["kind"] == "DaskCluster":
            yield f"{where} scheduler", doc["spec"]["scheduler"]["spec"]
            yield f"{where} worker", doc["spec"]["worker"]["spec"]
        elif doc["kind"] == "Job":
            yield where, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield where, doc["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _argv(container: dict[str, Any]) -> list[str]:
    return [str(arg) for arg in (*container.get("command", []), *container.get("args", []))]


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _driver_argv() -> list[str]:
    (driver,) = _role_pods()["driver"]["containers"]
    return _argv(driver)


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [v for v in pod["volumes"] if v["name"] == name]
    assert len(volumes) == 1, f"{len(volumes)} volumes named {name}"
    return volumes[0]


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# --- helpers: Dockerfile ------------------------------------------------------------------


@functools.cache
def _instructions() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return tuple((text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical)


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _from_image(arguments: str) -> tuple[str, str | None]:
    words = [word for word in arguments.split() if not word.startswith("--")]
    alias = words[2] if len(words) == 3 and words[1].lower() == "as" else None
    return words[0], alias


def _final(instruction: str) -> list[str]:
    return [arguments for name, arguments in _stages()[-1] if name == instruction]


def _env_of_final_stage() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in _final("ENV"):
        for word in shlex.split(arguments):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def _pyproject_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


def _pyproject_dependencies() -> list[Requirement]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    assert match
    return [Requirement(item) for item in re.findall(r'"([^"]+)"', match.group(1))]


@functools.cache
def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^=\s;#]+)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = match.group(2)
    return pins


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax (Go's filepath.Match plus `**`) as a regex."""
    parts, i = [], 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        else:
            char = pattern[i]
            parts.append({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)))
            i += 1
    return re.compile("".join(parts))


def _dockerignored(path: str) -> bool:
    """Whether the build context leaves path out (a left-out directory takes its contents)."""
    prefixes = ["/".join(path.split("/")[: n + 1]) for n in range(path.count("/") + 1)]
    ignored = False
    for pattern in _dockerignore_patterns():
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


# --- helpers: docs and command lines --------------------------------------------------------


def _code_lines(text: str) -> Iterator[str]:
    """Logical lines of the fenced code blocks: continuations joined, comments dropped."""
    for block in re.findall(r"^```[\w-]*\n(.*?)^```", text, re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if pending == "" and line.lstrip().startswith("#"):
                continue
            pending += line
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            yield pending
            pending = ""


def _command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every command line in the docs and the manifests, as (where, argv)."""
    for doc in DOCS:
        for line in _code_lines(doc.read_text(encoding="utf-8")):
            if line.startswith(("FROM ", "RUN ", "USER ", "COPY ", "components:", "  - ")):
                continue  # a Dockerfile or a YAML snippet
            yield doc.name, shlex.split(line, comments=True)
    for where, pod in _all_pods():
        for container in _containers(pod):
            yield f"{where} {container['name']}", _argv(container)


def _invocations(argv: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(command, its options) for each `dask scheduler|worker` and `mountproc SUB` in argv,
    including `docker run ... IMAGE SUB` with a mountproc image."""
    segment: list[str] = []
    for word in [*argv, ";"]:
        if word in {";", "&&", "||", "|"}:
            yield from _invocation(segment)
            segment = []
        else:
            segment.append(word)


def _invocation(words: list[str]) -> Iterator[tuple[str, list[str]]]:
    for i, word in enumerate(words[:-1]):
        program = "mountproc" if re.fullmatch(r"(?:.*/)?mountproc:[\w.-]+", word) else word
        command = f"{program} {words[i + 1]}"
        if command in {"dask scheduler", "dask worker"} or (
            program == "mountproc" and words[i + 1] in {"run", "check", "worker"}
        ):
            options = [w.split("=", 1)[0] for w in words[i + 2 :] if w.startswith("--")]
            yield command, options
            return


@functools.cache
def _help(command: str) -> str | None:
    program, sub = command.split()
    done = subprocess.run(
        [sys.executable, "-m", program, sub, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


# --- Kubernetes manifests -----------------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind() -> None:
    files = sorted(K8S_DIR.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict), path
            assert doc.get("apiVersion"), path
            assert doc.get("kind"), path


def test_kustomizations_reference_existing_files() -> None:
    for path, doc in _manifests():
        if doc["kind"] not in {"Kustomization", "Component"}:
            continue
        for entry in (*doc.get("resources", []), *doc.get("components", [])):
            assert (path.parent / entry).exists(), f"{path}: {entry}"


def test_daskcluster_has_scheduler_and_worker_specs() -> None:
    cluster = _one("DaskCluster")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    scheduler, worker = cluster["spec"]["scheduler"], cluster["spec"]["worker"]
    assert scheduler["spec"]["containers"]
    assert worker["spec"]["containers"]
    assert isinstance(worker["replicas"], int)
    assert worker["replicas"] >= 1
    service = scheduler["service"]
    assert service["selector"]["dask.org/cluster-name"] == _name(cluster)
    assert service["selector"]["dask.org/component"] == "scheduler"
    assert 8786 in [port["port"] for port in service["ports"]]


def test_driver_job_targets_the_clusters_scheduler_service() -> None:
    job = _one("Job")
    assert job["apiVersion"] == "batch/v1"
    argv = _driver_argv()
    assert argv[argv.index("run") - 1] == "mountproc"
    assert (ROOT / argv[argv.index("run") + 1]).is_file()
    scheduler = f"tcp://{_name(_one('DaskCluster'))}-scheduler:8786"
    assert _option(argv, "--scheduler") == scheduler
    assert _option(argv, "--source") == SOURCE_PATH
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("role", ROLES)
def test_every_container_mounts_the_source_read_only_at_the_same_path(role: str) -> None:
    pod = _role_pods()[role]
    for container in pod["containers"]:
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == SOURCE_PATH]
        assert len(mounts) == 1, f"{role}/{container['name']} does not mount {SOURCE_PATH}"
        assert mounts[0].get("readOnly") is True, f"{role}/{container['name']}"
        _assert_read_only_volume(_volume(pod, mounts[0]["name"]))


def _assert_read_only_volume(volume: dict[str, Any]) -> None:
    if "nfs" in volume:
        assert volume["nfs"].get("readOnly") is True, volume
        return
    claim = volume["persistentVolumeClaim"]
    assert claim.get("readOnly") is True, volume
    pvc = _named("PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    pv = _named("PersistentVolume", pvc["spec"]["volumeName"])
    assert pv["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert "ro" in pv["spec"].get("mountOptions", [])
    backend = pv["spec"].get("nfs") or pv["spec"].get("csi")
    assert backend is not None
    assert backend.get("readOnly") is True, pv


def test_all_roles_share_one_source_claim_and_one_image() -> None:
    claims, images = set(), set()
    for pod in _role_pods().values():
        for container in pod["containers"]:
            images.add(container["image"])
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == SOURCE_PATH]
            claims.add(json.dumps(_volume(pod, mount["name"]), sort_keys=True))
    assert len(claims) == 1, claims
    assert len(images) == 1, images


def test_workers_run_one_thread_with_resources() -> None:
    for container in _role_pods()["worker"]["containers"]:
        argv = _argv(container)
        assert "worker" in argv, argv
        assert _option(argv, "--nthreads") == "1"
        # the operator scales down by deleting the Deployments named after retired workers
        assert _option(argv, "--name") == "$(DASK_WORKER_NAME)"
        assert _option(argv, "--nworkers") == "1"
    for role, pod in _role_pods().items():
        for container in pod["containers"]:
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (role, kind)


def test_workers_have_a_writable_scratch_at_the_drivers_scratch_path() -> None:
    scratch = _option(_driver_argv(), "--scratch")
    for container in _role_pods()["worker"]["containers"]:
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == scratch]
        assert not mount.get("readOnly", False)


def test_pods_run_as_non_root_without_privileges() -> None:
    pods = list(_all_pods())
    assert len(pods) >= 4
    for where, pod in pods:
        pod_context = pod.get("securityContext", {})
        for container in _containers(pod):
            context = container.get("securityContext", {})
            label = f"{where} {container['name']}"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, label
            assert context.get("runAsUser", pod_context.get("runAsUser")) == IMAGE_UID, label
            assert context.get("allowPrivilegeEscalation") is False, label
            assert context.get("readOnlyRootFilesystem") is True, label
            assert not context.get("privileged", False), label
            assert context.get("capabilities", {}).get("drop") == ["ALL"], label


def test_kustomize_build_sets_namespace_and_image() -> None:
    docs = _kustomize(K8S_DIR)
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    kinds = {doc["kind"] for doc in docs}
    assert {"DaskCluster", "Job", "PersistentVolume", "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        if doc["kind"] not in {"Namespace", "PersistentVolume"}:
            assert doc["metadata"]["namespace"] == kustomization["namespace"], doc["kind"]
    built: dict[str, list[str]] = {"DaskCluster": [], "Job": []}
    for doc in docs:
        if doc["kind"] in built:
            spec = doc["spec"]
            pods = (
                [spec["scheduler"]["spec"], spec["worker"]["spec"]]
                if doc["kind"] == "DaskCluster"
                else [spec["template"]["spec"]]
            )
            built[doc["kind"]] += [c["image"] for p in pods for c in _containers(p)]
    assert set(built["DaskCluster"]) | set(built["Job"]) == {expected}


def test_shared_scratch_component_mounts_one_claim_at_the_drivers_scratch_path(
    tmp_path: Path,
) -> None:
    base = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    base["components"] = ["components/shared-scratch"]
    overlay = tmp_path / "kubernetes"
    shutil.copytree(K8S_DIR, overlay)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(base))
    docs = _kustomize(overlay)
    cluster = next(doc for doc in docs if doc["kind"] == "DaskCluster")
    job = next(doc for doc in docs if doc["kind"] == "Job")
    scratch = _option(_argv(job["spec"]["template"]["spec"]["containers"][0]), "--scratch")
    for pod in (cluster["spec"]["worker"]["spec"], job["spec"]["template"]["spec"]):
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == scratch]
        claim = _volume(pod, mount["name"])["persistentVolumeClaim"]["claimName"]
        pvc = next(
            doc for doc in docs if doc["kind"] == "PersistentVolumeClaim" and _name(doc) == claim
        )
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# --- Dockerfile, constraints, .dockerignore ---------------------------------------------------


def test_dockerfile_base_images_are_pinned() -> None:
    stages = _stages()
    assert len(stages) >= 2, "expected a build stage and a final stage"
    aliases: set[str] = set()
    for stage in stages:
        image, alias = _from_image(stage[0][1])
        if image not in aliases:
            assert "latest" not in image, image
            assert "$" not in image, f"{image}: a FROM through a build argument is not pinned"
            assert PINNED_IMAGE.fullmatch(image), f"{image} is not pinned to an x.y.z tag"
        if alias:
            aliases.add(alias)
    final_image, _ = _from_image(stages[-1][0][1])
    assert final_image not in aliases, "the final stage must start from the pinned base"


def test_dockerfile_final_stage_runs_as_the_non_root_uid_the_manifests_use() -> None:
    users = _final("USER")
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == str(IMAGE_UID)


def test_dockerfile_installs_pinned_without_caches_or_build_tools() -> None:
    installs = [args for name, args in _instructions() if name == "RUN" and "pip install" in args]
    assert installs
    for arguments in installs:
        assert "--no-cache-dir" in arguments, arguments
        assert re.search(r"(--constraint|-c)\s+\S*constraints\.txt", arguments), arguments
    for arguments in _final("RUN"):
        if "apt-get install" in arguments:
            assert "rm -rf /var/lib/apt/lists/*" in arguments
            assert "--no-install-recommends" in arguments
            assert not BUILD_TOOLS.search(arguments), arguments
    env = _env_of_final_stage()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_dockerfile_entrypoint_labels_version_and_workdir() -> None:
    (entrypoint,) = _final("ENTRYPOINT")
    assert json.loads(entrypoint)[-1] == "mountproc"
    (cmd,) = _final("CMD")
    assert json.loads(cmd) == ["--help"]
    assert any("org.opencontainers.image.title" in label for label in _final("LABEL"))
    args = dict(arg.partition("=")[::2] for arg in _final("ARG"))
    assert args.get("MOUNTPROC_VERSION") == _pyproject_version()
    (driver,) = _role_pods()["driver"]["containers"]
    assert _final("WORKDIR")[-1] == driver["workingDir"]


def test_constraints_pin_every_line_and_cover_the_runtime_dependencies() -> None:
    pins = _pins()
    for requirement in _pyproject_dependencies():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]}"
    assert "mountproc" not in pins
    assert not {"pip", "setuptools", "wheel", "pytest"} & set(pins)


def test_constraints_include_the_dependencies_of_what_they_pin() -> None:
    pins = _pins()
    checked = 0
    for name, version in pins.items():
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if distribution.version != version:
            continue  # its dependencies at that version are not known here
        checked += 1
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                assert canonicalize_name(requirement.name) in pins, f"{name} needs {line}"
    if checked == 0:
        pytest.skip("none of the pinned versions is installed here")


def test_dockerignore_keeps_junk_out_and_the_copied_sources_in() -> None:
    for path in (
        ".git/HEAD",
        "outputs/resize-images-000000.tar",
        ".mountproc-scratch-outputs/x",
        "mountproc/__pycache__/_cli.cpython-311.pyc",
        ".pytest_cache/v",
        ".mypy_cache/x",
        "tests/test_worker.py",
        "sample-photos/a.jpg",
    ):
        assert _dockerignored(path), f"{path} would be in the build context"
    copied = [
        source
        for name, arguments in _instructions()
        if name in {"COPY", "ADD"} and "--from" not in arguments
        for source in shlex.split(arguments)[:-1]
        if not source.startswith("--")
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source), f"{source} is copied but excluded by .dockerignore"
    for source in ("mountproc/_cli.py", "jobs/resize_images.py"):
        assert not _dockerignored(source), source


# --- docs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_docs_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, f"{doc.name} links to nothing"
    for link in links:
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        target = (doc.parent / link.split("#", 1)[0]).resolve()
        assert target.exists(), f"{doc.name}: {link}"
        assert ROOT in target.parents, f"{doc.name}: {link} leaves the repository"
    for path in re.findall(r"(?<![\w/.-])(deploy/[\w./-]*[\w/])", text):
        if re.fullmatch(r"deploy/mountproc-[\w-]+", path):
            continue  # kubectl's deploy/NAME: a Deployment, not a file
        assert (ROOT / path).exists(), f"{doc.name} names {path}"


@pytest.mark.parametrize(
    "command",
    ["dask scheduler", "dask worker", "mountproc run", "mountproc check", "mountproc worker"],
)
def test_documented_options_exist(command: str) -> None:
    used = [
        (where, option)
        for where, argv in _command_lines()
        for found, options in _invocations(argv)
        if found == command
        for option in options
    ]
    assert used, f"`{command}` is used nowhere in the docs or manifests"
    help_text = _help(command)
    if help_text is None:
        pytest.skip(f"`{command} --help` does not run here")
    known = set(re.findall(r"--[a-z0-9][a-z0-9_-]*", help_text))
    for where, option in used:
        if command == "mountproc run" and option in JOB_PARAMS:
            continue
        assert option in known, f"{where}: `{command} {option}` is not an option"
