"""cluster.yaml validates the way `ray up` validates it (offline: no cloud call), sets up what the
sweep needs on every node, and the README's cluster commands name commands that exist."""

import re
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_ray_accepts_the_file(config):
    validate_config(prepare_config(config))  # what `ray up` runs before it creates anything


def test_ray_rejects_a_broken_copy(config):
    broken = {**config, "available_node_types": {**config["available_node_types"]}}
    broken["available_node_types"]["gpu_spot"] = {**broken["available_node_types"]["gpu_spot"], "min_wokers": 0}
    with pytest.raises(Exception, match="min_wokers"):
        validate_config(prepare_config(broken))


def test_a_cpu_head_and_autoscaled_spot_gpu_workers(config):
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no trial is scheduled beside the driver
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert len(workers) == 1
    worker = workers[0]
    assert re.match(r"(g|p)\d", worker["node_config"]["InstanceType"])
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
    assert worker["node_config"]["IamInstanceProfile"]["Name"] == "ray-autoscaler-v1"  # writes to S3


def test_every_node_installs_this_project_and_the_same_ray(config):
    assert config["file_mounts"]["~/sensitivity-sweep"] == "."
    install = " ".join(config["setup_commands"])
    assert "-e ~/sensitivity-sweep" in install
    assert f"ray[default,tune]=={ray.__version__}" in install  # the client's Ray, or `ray up` refuses


def test_token_auth_everywhere_and_the_dashboard_on_localhost(config):
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head_start = config["head_start_ray_commands"][-1]
    worker_start = config["worker_start_ray_commands"][-1]
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start


def cluster_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert "## Cluster" in text, "README.md has no '## Cluster' section"
    return text.split("## Cluster", 1)[1]


def commands(section: str) -> list[list[str]]:
    """The shell commands in the section's ```bash blocks, continuation lines joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(line.split())
    return found


def test_the_readme_cluster_commands_exist():
    from ray.scripts.scripts import cli

    from sweep.command.cli import build_parser

    sweep_commands = set(build_parser()._subparsers._group_actions[0].choices)
    seen = set()
    for words in commands(cluster_section()):
        words = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
        for tool, known in (("ray", cli.commands), ("sweep", sweep_commands)):
            if tool in words:
                sub = words[words.index(tool) + 1]
                assert sub in known, f"`{tool} {sub}` in README.md is not a {tool} command"
                if tool == "ray" and sub == "job":
                    assert words[words.index(tool) + 2] in cli.commands["job"].commands
                seen.add(f"{tool} {sub}")
    for needed in ("ray up", "ray job", "ray down", "ray start", "ray dashboard", "sweep run", "sweep status"):
        assert needed in seen, f"README.md's cluster section does not show `{needed}`"
