"""The Azure ML target, offline: entities built and validated by azure-ai-ml itself, a real
MLClient with a credential that fails on use and its operations replaced at the boundary."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from azure.ai.ml import MLClient, load_compute, load_environment, load_job
from azure.core.exceptions import ResourceNotFoundError
from omegaconf import OmegaConf

from common.azure_workspace import WorkspaceSettings, WorkspaceSettingsError, ml_client
from common.paths import PROJECT_ROOT
from tests.conftest import compose_config, run_module
from tests.fake_arm import SUBSCRIPTION, WORKSPACE, ArmStandIn, FakeCredential
from train.azureml import job as job_module
from train.azureml.compute import ComputeError, ensure_compute
from train.azureml.submit import submit
from train.azureml.sweep import job_table
from train.data import DataError

WORKSPACE_ENV = {
    "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
    "AZURE_RESOURCE_GROUP": "rg-finetune",
    "AZUREML_WORKSPACE_NAME": "ws-finetune",
}


class NoNetworkCredential:
    """A TokenCredential that fails the test if anything asks it for a token."""

    def get_token(self, *scopes, **kwargs):
        raise AssertionError(f"a token was requested for {scopes}: something tried the network")


@pytest.fixture
def no_workspace_env(monkeypatch, tmp_path):
    for var in WORKSPACE_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no config.json above the cwd


@pytest.fixture
def client(no_workspace_env):
    return MLClient(NoNetworkCredential(), SUBSCRIPTION, "rg-finetune", "ws-finetune")


def azure_cfg(tmp_path, *overrides):
    return compose_config("target=azureml", *overrides, tmp=tmp_path)


# --- workspace -------------------------------------------------------------------------


def test_workspace_settings_fall_back_to_the_environment():
    settings = WorkspaceSettings.from_config({"workspace_name": "from-config"}, environ=WORKSPACE_ENV)
    assert (settings.subscription_id, settings.resource_group, settings.workspace_name) == (
        SUBSCRIPTION,
        "rg-finetune",
        "from-config",
    )
    made = ml_client(settings, NoNetworkCredential())
    assert (made.subscription_id, made.resource_group_name, made.workspace_name) == (
        SUBSCRIPTION,
        "rg-finetune",
        "from-config",
    )


def test_missing_workspace_names_every_variable(no_workspace_env):
    with pytest.raises(WorkspaceSettingsError) as err:
        WorkspaceSettings.from_config({}, environ={}).check()
    for var in WORKSPACE_ENV:
        assert var in str(err.value)
    with pytest.raises(WorkspaceSettingsError, match="AZUREML_WORKSPACE_NAME") as err:
        WorkspaceSettings.from_config(
            {}, environ={k: v for k, v in WORKSPACE_ENV.items() if "WORKSPACE" not in k}
        ).check()
    assert "AZURE_SUBSCRIPTION_ID" not in str(err.value)


def test_workspace_from_azure_ml_config_json(no_workspace_env, tmp_path):
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(
        json.dumps(
            {"subscription_id": SUBSCRIPTION, "resource_group": "rg-json", "workspace_name": "ws-json"}
        )
    )
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    settings = WorkspaceSettings.from_config({"config_path": str(nested)}, environ={})
    made = ml_client(settings, NoNetworkCredential())
    assert (made.resource_group_name, made.workspace_name) == ("rg-json", "ws-json")


# --- preflight: nothing is called, nothing is created ----------------------------------


def test_submit_without_workspace_fails_first_naming_the_variables(no_workspace_env, tmp_path):
    cfg = azure_cfg(tmp_path)
    with pytest.raises(WorkspaceSettingsError, match="AZURE_SUBSCRIPTION_ID"):
        submit(cfg, credential=NoNetworkCredential())
    assert not (Path(cfg.paths.output_dir) / "azureml").exists()


class RecordingOperations:
    """Replaces MLClient's compute/environments/jobs calls and records them in order."""

    def __init__(self, client, monkeypatch, existing_compute=None, existing_env=None):
        self.calls: list[tuple[str, object]] = []
        self.submitted = None

        def not_found(what):
            raise ResourceNotFoundError(f"{what} not found")

        def record(name, result=None, fail=None):
            def call(*args, **kwargs):
                self.calls.append((name, args[0] if args else kwargs))
                if fail:
                    not_found(fail)
                return result(*args) if callable(result) else result

            return call

        poller = SimpleNamespace(result=lambda: "created compute")
        monkeypatch.setattr(
            client.compute,
            "get",
            record("compute.get", existing_compute, None if existing_compute else "compute"),
        )
        monkeypatch.setattr(client.compute, "begin_create_or_update", record("compute.create", poller))
        monkeypatch.setattr(
            client.environments,
            "get",
            record("environments.get", existing_env, None if existing_env else "env"),
        )
        monkeypatch.setattr(
            client.environments, "create_or_update", record("environments.create", lambda e: e)
        )

        def create_job(job):
            self.calls.append(("jobs.create", job))
            self.submitted = job
            return SimpleNamespace(
                name="calm_tomato_1x2y", studio_url="https://ml.azure.com/runs/calm_tomato_1x2y"
            )

        monkeypatch.setattr(client.jobs, "create_or_update", create_job)
        monkeypatch.setattr(client.jobs, "stream", record("jobs.stream"))

    @property
    def names(self):
        return [name for name, _ in self.calls]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+profile=a100", "target/compute=e16s_v3"], "Standard_E16s_v3 .* has no GPU .*sft.bf16"),
        (["target.process_count_per_instance=2"], "process_count_per_instance=2 .* 1 GPU"),
        (["target.instance_count=2"], "instance_count=2 exceeds target.compute.max_instances=1"),
        (["model.name_or_path=/no/such/model"], "model.name_or_path=/no/such/model"),
        (["target.compute.shm_size=lots"], r"shm_size='lots': give a number and a unit"),
        (["target.compute.shm_size=300g"], r"shm_size=300g is more than the node's memory \(220 GiB"),
        (["target.compute.memory_gib=null"], r"memory_gib is not set for Standard_NC24ads_A100_v4"),
    ],
)
def test_preflight_errors_name_the_key_before_any_call(client, monkeypatch, tmp_path, overrides, message):
    ops = RecordingOperations(client, monkeypatch)
    with pytest.raises(ValueError, match=message):
        submit(azure_cfg(tmp_path, *overrides), client=client)
    assert ops.calls == []


def test_missing_data_file_is_named_before_any_call(client, monkeypatch, tmp_path):
    ops = RecordingOperations(client, monkeypatch)
    with pytest.raises(DataError, match="missing.jsonl"):
        submit(azure_cfg(tmp_path, f"data.source={tmp_path}/missing.jsonl"), client=client)
    assert ops.calls == []


def test_existing_compute_of_another_size_is_refused_before_env_and_job(client, monkeypatch, tmp_path):
    other = SimpleNamespace(name="gpu-nc24ads-a100-v4", size="Standard_NC4as_T4_v3", type="amlcompute")
    ops = RecordingOperations(client, monkeypatch, existing_compute=other)
    with pytest.raises(ComputeError, match="Standard_NC4as_T4_v3, not Standard_NC24ads_A100_v4"):
        submit(azure_cfg(tmp_path), client=client)
    assert ops.names == ["compute.get"]


def existing_cluster(vm_priority: str) -> ArmStandIn:
    """ARM's "Compute - Get" answer for an AmlCompute cluster (sizes come back upper-cased)."""
    name = "gpu-nc24ads-a100-v4"
    body = {
        "id": f"{WORKSPACE}/computes/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/computes",
        "location": "westeurope",
        "properties": {
            "computeType": "AmlCompute",
            "provisioningState": "Succeeded",
            "properties": {
                "vmSize": "STANDARD_NC24ADS_A100_V4",
                "vmPriority": vm_priority,
                "scaleSettings": {
                    "maxNodeCount": 1,
                    "minNodeCount": 0,
                    "nodeIdleTimeBeforeScaleDown": "PT120S",
                },
                "osType": "Linux",
            },
        },
    }
    return ArmStandIn({("GET", body["id"]): body})


@pytest.mark.parametrize(
    ("vm_priority", "tier", "reused"),
    [
        ("LowPriority", "dedicated", False),
        ("LowPriority", "low_priority", True),
        ("Dedicated", "dedicated", True),
    ],
)
def test_an_existing_cluster_is_reused_only_with_the_configured_tier(tmp_path, vm_priority, tier, reused):
    """azure-ai-ml's own compute.get over ARM's JSON: a low-priority cluster is not a dedicated one."""
    stand_in = existing_cluster(vm_priority)
    ml = MLClient(FakeCredential(), SUBSCRIPTION, "rg", "ws", transport=stand_in.transport())
    compute_cfg = azure_cfg(tmp_path, f"target.compute.tier={tier}").target.compute
    if reused:
        assert ensure_compute(ml, compute_cfg).size == "STANDARD_NC24ADS_A100_V4"
    else:
        with pytest.raises(
            ComputeError, match="has tier low_priority, not dedicated.*target.compute.tier=low_priority"
        ):
            ensure_compute(ml, compute_cfg)
    assert [r.method for r in stand_in.sent] == ["GET"]  # never created or changed


# --- submission ------------------------------------------------------------------------


def test_submit_creates_compute_then_environment_then_job_and_records_it(
    client, monkeypatch, tmp_path, capsys
):
    cfg = azure_cfg(tmp_path, "sft.learning_rate=3e-3", "target.compute.tier=low_priority")
    ops = RecordingOperations(client, monkeypatch)
    record = submit(cfg, client=client)

    assert ops.names == [
        "compute.get",
        "compute.create",
        "environments.get",
        "environments.create",
        "jobs.create",
        "jobs.stream",
    ]
    cluster = ops.calls[1][1]
    assert (cluster.size, cluster.tier, cluster.min_instances, cluster.max_instances) == (
        "Standard_NC24ads_A100_v4",
        "low_priority",
        0,
        1,
    )
    assert cluster.idle_time_before_scale_down == 120
    environment = ops.calls[3][1]
    assert environment.build.path.endswith("environment") and environment.version

    # What azure-ai-ml would send: the REST body of the job it was handed.
    rest = ops.submitted._to_job()._to_rest_object().properties
    assert rest.compute_id == "gpu-nc24ads-a100-v4"
    assert rest.environment_id == f"azureml:{environment.name}:{environment.version}"
    assert rest.experiment_name == "finetune-phi"
    assert "sft.learning_rate=3e-3" in rest.command and "target=local" in rest.command
    assert set(rest.inputs) == {"train_data", "test_data"} and set(rest.outputs) == {"run"}
    assert ops.calls[-1][1] == "calm_tomato_1x2y"  # streamed

    expected = {
        "job_name": "calm_tomato_1x2y",
        "studio_url": "https://ml.azure.com/runs/calm_tomato_1x2y",
        "experiment_name": "finetune-phi",
        "subscription_id": SUBSCRIPTION,
        "resource_group": "rg-finetune",
        "workspace_name": "ws-finetune",
        "registered_model_name": "tiny-phi3-sft",
    }
    assert {k: record[k] for k in expected} == expected and record["submitted_at"]
    run_record = json.loads((Path(cfg.paths.output_dir) / "azureml_job.json").read_text())
    last = json.loads((Path(cfg.paths.output_root) / "azureml" / "last_job.json").read_text())
    assert run_record == last == record
    out = capsys.readouterr().out
    assert "calm_tomato_1x2y" in out and "https://ml.azure.com/runs/calm_tomato_1x2y" in out


def test_existing_compute_and_environment_are_reused_and_stream_can_be_off(client, monkeypatch, tmp_path):
    cfg = azure_cfg(tmp_path, "target.stream=false")
    existing = SimpleNamespace(name="gpu-nc24ads-a100-v4", size="standard_nc24ads_a100_v4", tier="dedicated")
    ops = RecordingOperations(client, monkeypatch, existing_compute=existing, existing_env=object())
    submit(cfg, client=client)
    assert ops.names == ["compute.get", "environments.get", "jobs.create"]


def test_nodes_and_processes_map_to_pytorch_distribution(client, monkeypatch, tmp_path):
    cfg = azure_cfg(
        tmp_path,
        "target.instance_count=2",
        "target.compute.max_instances=2",
        "target.compute.gpus_per_node=4",
        "target.process_count_per_instance=4",
        "target.stream=false",
    )
    ops = RecordingOperations(client, monkeypatch)
    submit(cfg, client=client)
    rest = ops.submitted._to_job()._to_rest_object().properties
    assert rest.resources.instance_count == 2
    assert rest.distribution.distribution_type == "PyTorch"
    assert rest.distribution.process_count_per_instance == 4
    assert rest.resources.shm_size == "110g"  # half the node's 220 GiB, not Azure's default 2g


def test_shm_size_is_configurable_and_shows_in_the_dry_run_job(no_workspace_env, tmp_path):
    cfg = azure_cfg(tmp_path, "target.dry_run=true", "+profile=cpu", "target.compute.shm_size=48g")
    submit(cfg)
    assert load_job(Path(cfg.paths.output_dir) / "azureml" / "job.yaml").resources.shm_size == "48g"


# --- dry run: files for the SDK's loaders and `az ml ... create -f` --------------------


@pytest.fixture
def dry_run(no_workspace_env, tmp_path):
    cfg = azure_cfg(tmp_path, "target.dry_run=true", "sft.learning_rate=3e-3", "+profile=cpu")
    submit(cfg)  # no client, no credential, no workspace settings: nothing may be called
    return cfg, Path(cfg.paths.output_dir) / "azureml"


def test_dry_run_writes_yaml_the_sdk_loads_and_validates(dry_run, client):
    cfg, stage = dry_run
    loaded = load_job(stage / "job.yaml")
    assert loaded.compute == "gpu-nc24ads-a100-v4"
    assert loaded.resources.shm_size == "110g"  # sized from the SKU's memory
    assert loaded.environment.startswith("finetune-phi-train:")
    for name in ("train_data", "test_data"):
        assert Path(loaded.inputs[name].path).is_file()  # local files, uploaded on submit
    assert Path(loaded.code).is_dir() and (Path(loaded.code) / "conf" / "train.yaml").is_file()
    result = client.jobs.validate(loaded)
    assert result.passed, result.error_messages

    compute = load_compute(stage / "compute.yaml")
    assert (compute.size, compute.min_instances, compute.max_instances) == ("Standard_NC24ads_A100_v4", 0, 1)
    environment = load_environment(stage / "environment.yaml")
    context = Path(environment.build.path)
    assert (context / "Dockerfile").is_file() and environment.version == loaded.environment.split(":")[1]
    assert not (Path(cfg.paths.output_dir) / "azureml_job.json").exists()  # nothing was submitted
    text = "".join(p.read_text() for p in stage.glob("*.yaml"))
    assert "credential" not in text.lower() and "token" not in text.lower()


def test_the_job_code_snapshot_holds_every_project_package_its_modules_import(dry_run):
    """The job's image holds installed packages only, not this project: the snapshot must carry all
    of it that `python -m train` imports."""
    _, stage = dry_run
    code = Path(load_job(stage / "job.yaml").code)
    imported = set()
    for path in code.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
    needed = imported & {p.name for p in PROJECT_ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert "common" in needed and needed <= {p.name for p in code.iterdir()}, needed


def test_the_job_command_composes_to_the_same_config(dry_run, tmp_path):
    cfg, stage = dry_run
    loaded = load_job(stage / "job.yaml")
    args = shlex.split(loaded.command)
    assert args[:3] == ["python", "-m", "train"] and "target=local" in args and "+profile=cpu" in args
    mounts = {f"${{{{inputs.{n}}}}}": str(i.path) for n, i in loaded.inputs.items()}
    mounts["${{outputs.run}}"] = str(tmp_path / "job-output")
    in_job = []
    for arg in args[3:]:
        for placeholder, path in mounts.items():
            arg = arg.replace(placeholder, path)
        in_job.append(arg)

    remote = compose_config(*in_job)
    local, remote = (OmegaConf.to_container(c, resolve=False) for c in (cfg, remote))
    assert (
        remote["paths"]["output_root"] == str(tmp_path / "job-output") and remote["target"]["name"] == "local"
    )
    assert remote["run_id"] == "azureml"  # fixed: a preempted job's rerun resumes in the same folder
    for c in (local, remote):
        for key in ("target", "paths", "run_id"):
            c.pop(key)
        for key in ("source", "eval_source", "format", "output_dir", "dedupe"):
            c["data"].pop(key)
    assert remote == local


def test_sweep_table_lists_one_job_per_point(tmp_path):
    for point, name in (("0", "job_a"), ("1", "job_b")):
        (tmp_path / point / ".hydra").mkdir(parents=True)
        (tmp_path / point / ".hydra" / "overrides.yaml").write_text(
            f"- target=azureml\n- sft.learning_rate={point}e-3\n- paths.output_root=/x\n"
        )
        (tmp_path / point / "azureml_job.json").write_text(
            json.dumps({"job_name": name, "studio_url": f"u/{name}"})
        )
    (tmp_path / "2").mkdir()  # a point that submitted nothing
    lines = job_table(tmp_path)
    assert len(lines) == 3
    assert lines[1].split() == ["0", "job_a", "sft.learning_rate=0e-3", "u/job_a"]
    assert lines[2].split() == ["1", "job_b", "sft.learning_rate=1e-3", "u/job_b"]


def test_carried_overrides_drop_this_sides_keys():
    given = [
        "+profile=a100",
        "target=azureml",
        "target/compute=e16s_v3",
        "paths.output_root=/x",
        "run_id=r",
        "sft.seed=3",
    ]
    assert job_module.carried_overrides(given, {"data.source"}) == ["+profile=a100", "sft.seed=3"]


@pytest.mark.slow
def test_cli_sweep_dry_run_prints_one_row_per_point(no_workspace_env, tmp_path):
    result = run_module(
        "train",
        "-m",
        "target=azureml",
        "target.dry_run=true",
        "sft.learning_rate=1e-3,3e-3",
        f"paths.output_root={tmp_path}/outputs",
        unset=tuple(WORKSPACE_ENV),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("Azure ML jobs of this sweep")[1].splitlines()[1:4]
    assert [row.split()[:3] for row in table] == [
        ["point", "job", "overrides"],
        ["0", "(dry", "run)"],
        ["1", "(dry", "run)"],
    ]
    assert "sft.learning_rate=0.001" in table[1] and "sft.learning_rate=0.003" in table[2]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    for point in ("0", "1"):
        assert load_job(sweep / point / "azureml" / "job.yaml").compute == "gpu-nc24ads-a100-v4"


def test_hub_dataset_stays_a_hub_id_and_remote_data_is_an_input(no_workspace_env, tmp_path):
    cfg = azure_cfg(tmp_path, "+profile=a100", "target.dry_run=true")
    submit(cfg)
    loaded = load_job(Path(cfg.paths.output_dir) / "azureml" / "job.yaml")
    assert not loaded.inputs  # the job downloads HuggingFaceH4/ultrachat_200k itself
    assert shlex.split(loaded.command)[3:5] == ["+profile=a100", "target=local"]

    cfg = azure_cfg(
        tmp_path / "asset",
        "target.dry_run=true",
        "data.source=azureml:ultrachat-1pct:3",
        "data.eval_source=null",
    )
    submit(cfg)
    job_yaml = Path(cfg.paths.output_dir) / "azureml" / "job.yaml"
    assert "path: azureml:ultrachat-1pct:3" in job_yaml.read_text()
    loaded = load_job(job_yaml)
    assert loaded.inputs["train_data"].path == "ultrachat-1pct:3"  # the SDK's form of an asset reference
    assert "data.source=${{inputs.train_data}}" in loaded.command


def test_optuna_sweeps_are_refused_before_any_call(client, monkeypatch, tmp_path):
    ops = RecordingOperations(client, monkeypatch)
    with pytest.raises(ValueError, match="Optuna sweeper needs"):
        submit(azure_cfg(tmp_path, "hparams_search=lr_optuna"), client=client)
    assert ops.calls == []
