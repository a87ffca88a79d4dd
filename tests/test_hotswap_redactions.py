"""A version redacted in place by an erasure (hyperrec.privacy.models) is reloaded by every
running server, wherever the erasure ran: the slot serves (version, redactions) targets and
load_shared fetches a download again when the version was redacted since."""

import json
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest
import requests

from hyperrec.online.hotswap import ModelSlot, Target, load_shared, versions_dir_cleanup


@dataclass
class Unit:
    version: int
    redactions: int


class Registry:
    def __init__(self):
        self.target, self.broken, self.loads = Target(1, 0), set(), []

    def load(self, target):
        self.loads.append(target)
        if target in self.broken:
            raise OSError(f"{target}: user_tower/saved_model.pb is truncated")
        return Unit(*target)


def test_a_grown_redaction_count_reloads_the_same_version_and_a_failed_reload_keeps_the_old_unit():
    reg, failures, now = Registry(), [], [0.0]
    slot = ModelSlot(lambda: reg.target, reg.load, lambda unit: None, on_failure=lambda t, why: failures.append(t),
                     clock=lambda: now[0])
    assert slot.refresh() and slot.target == Target(1, 0)
    assert not slot.refresh() and reg.loads == [Target(1, 0)]  # same count: nothing to do
    reg.target = Target(1, 1)  # an erasure redacted version 1
    assert slot.refresh() and slot.unit == Unit(1, 1) and slot.version == 1 and slot.events.swaps == 2
    assert not slot.refresh() and len(reg.loads) == 2
    reg.target, reg.broken = Target(1, 2), {Target(1, 2)}
    assert not slot.refresh() and slot.unit == Unit(1, 1)  # the old unit keeps serving
    assert failures == [Target(1, 2)] and "truncated" in slot.events.failures[Target(1, 2)]
    assert not slot.refresh() and len(reg.loads) == 3  # known bad: not retried every poll
    reg.broken = set()  # the store is back: the redacted files load on the retry after the backoff
    now[0] = 60.0
    assert slot.refresh() and slot.unit == Unit(1, 2)
    reg.target = Target(1, 3)  # the next change is tried at once
    assert slot.refresh() and slot.unit == Unit(1, 3)


def test_a_download_older_than_the_redaction_count_is_fetched_again(tmp_path):
    """The marker records the count the files were fetched for; a higher count deletes and
    fetches them again, an equal or lower one (a worker that polled just before the tag
    moved) reuses them. Folders stay `root/<version>`: cleanup still finds them."""
    fetched = []

    def download(redactions):
        def fetch(folder):
            fetched.append((folder.name, redactions))
            (folder / "model").mkdir(parents=True)
            (folder / "model" / "vocab").write_text(f"redacted {redactions} times")
            return folder / "model"
        return fetch

    def read(model_dir):
        return (model_dir / "vocab").read_text()

    assert load_shared(tmp_path, 5, download(0), read) == "redacted 0 times"
    assert load_shared(tmp_path, 5, download(0), read) == "redacted 0 times" and len(fetched) == 1
    assert load_shared(tmp_path, 5, download(1), read, redactions=1) == "redacted 1 times"
    assert load_shared(tmp_path, 5, download(0), read) == "redacted 1 times"  # newer serves an older ask
    assert fetched == [("5", 0), ("5", 1)]
    assert (tmp_path / "5" / ".complete").read_text().splitlines() == [str(tmp_path / "5" / "model"), "1"]
    (tmp_path / "5" / ".complete").write_text(str(tmp_path / "5" / "model"))  # a marker written before counts
    assert load_shared(tmp_path, 5, download(0), read) == "redacted 1 times" and len(fetched) == 2
    load_shared(tmp_path, 7, download(0), read)
    versions_dir_cleanup(tmp_path, {7})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["7"]


@pytest.mark.slow
def test_a_server_on_another_node_reloads_the_version_an_erasure_redacted(champion_server, tmp_path, monkeypatch):
    """The erasure runs in a workspace of its own (another node: no access to the server's
    downloads) sharing what a cluster shares: the registry, the privacy database, Feast and
    the PII key. Within a few polls the server's download no longer names the user and the
    unit it serves does not know them; everyone else's lists are unchanged."""
    from hyperrec.privacy import ConsentLedger, erase_user, needles_in_file

    with champion_server("redactions", ("--poll_s", "0.5")) as built:
        settings, world = built["settings"], built["world"]
        as_of = world.events["ts"].max().to_pydatetime()
        known = set(json.loads((built["model_dir"] / "warm_start" / "user_tower.vocab.json").read_text())
                    ["user_id_lookup"])
        users = [u for u in world.users.loc[world.users["consent_personalization"], "user_id"] if u in known]
        gone, others = users[0], users[1:9]
        downloads = settings.home / "serving" / "versions"
        log_path = settings.home / "server.log"

        def naming_the_user():
            return [p for p in downloads.rglob("*") if p.is_file() and needles_in_file(p, {"raw id": gone.encode()})]

        def serve():
            body = {"instances": [{"user_id": u, "k": 5} for u in (gone, *others, "someone-new")]}
            answer = requests.post(f"{built['url']}/v1/models/recommender:predict", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            return [(p["policy"], [i["item_id"] for i in p["items"]]) for p in answer.json()["predictions"]]

        def swaps():
            lines = requests.get(f"{built['url']}/metrics", timeout=10).text.splitlines()
            return next(float(line.split()[1]) for line in lines if line.startswith("hyperrec_model_swaps_total "))

        assert naming_the_user()  # (the search does see the id in the server's download)
        before = serve()
        assert before[0][0] == "personalized" and before[-1][0] == "popular"

        job_home = tmp_path / "erasure-job"
        job_home.mkdir()
        for shared in ("privacy.db", "feast"):
            (job_home / shared).symlink_to(settings.home / shared)
        monkeypatch.setenv("HYPERREC_HOME", str(job_home))  # (open_store sets it; restored after the test)
        monkeypatch.setenv("HYPERREC_PII_KEY_FILE", str(settings.home / "secrets" / "pii.key"))
        started = time.monotonic()
        report = erase_user(settings.model_copy(update={"home": job_home}), gone, "ticket RELOAD-1")
        erased_s = time.monotonic() - started
        assert report.status == "done" and report.removed["models.versions"] == 1
        assert report.removed["models.serving_cache"] == 0  # the server's downloads are out of the job's reach
        # the erasure withdrew their consent; granted again (a returning user), the server would
        # personalize them as long as its unit knows the id: their online rows are gone, so a
        # unit that does not know it serves them what a stranger gets
        ConsentLedger.open(settings).record_consent(gone, "personalization", True, at=as_of - timedelta(hours=1))
        deadline = time.monotonic() + 60
        while swaps() < 2:  # the first load, then the same version once more
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.25)
        reloaded_s = time.monotonic() - started - erased_s
        after = serve()
        assert after[0] == after[-1] and after[0][0] == "popular", (before, after)  # the stranger's list
        assert after[1:-1] == before[1:-1], (before, after)  # everyone else's, as before
        assert not naming_the_user()
        marker = (downloads / str(built["version"]) / ".complete").read_text().splitlines()
        assert marker[1] == "1" and swaps() == 2, (marker, swaps())
        print(f"erase_user {erased_s:.1f} s, then the server served the redacted unit after {reloaded_s:.1f} s")


def fake_version(settings, tmp_path, text: str):
    """(version, its source folder, a client): a registered version whose files are an MLmodel
    naming `model_dir` and one file in it."""
    from mlflow import MlflowClient

    from hyperrec.registry.model_registry import configure

    source = tmp_path / "source"
    (source / "model_dir").mkdir(parents=True)
    (source / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n"
                                    "    artifacts:\n      model_dir:\n        path: model_dir\n")
    (source / "model_dir" / "tower.txt").write_text(text)
    configure(settings)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    client.create_registered_model(settings.model_name)
    return int(client.create_model_version(settings.model_name, str(source)).version), source, client


def test_a_download_waits_out_a_redaction_and_takes_the_redacted_files(settings, tmp_path):
    """An erasure rewrites a version's files one by one (hyperrec.privacy.models): while the
    version is tagged as being redacted, no download is taken."""
    import threading

    from hyperrec.privacy.models import REDACTING_TAG, REDACTIONS_TAG
    from hyperrec.registry.model_registry import model_version_dir

    version, source, client = fake_version(settings, tmp_path, "old")
    client.set_model_version_tag(settings.model_name, str(version), REDACTING_TAG, "2026-12-07T10:00:00+00:00")
    got, done = {}, threading.Event()

    def download():
        got["dir"] = model_version_dir(settings, version, tmp_path / "download", wait_s=0.1)
        done.set()

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    assert not done.wait(1.5), "downloaded while the version was being redacted"
    (source / "model_dir" / "tower.txt").write_text("redacted")
    client.set_model_version_tag(settings.model_name, str(version), REDACTIONS_TAG, "1")
    client.delete_model_version_tag(settings.model_name, str(version), REDACTING_TAG)
    assert done.wait(30)
    assert (got["dir"] / "tower.txt").read_text() == "redacted"


def test_a_download_a_redaction_overlapped_is_fetched_again(settings, tmp_path, monkeypatch):
    """A redaction that began and ended inside one download (its count moved) may have mixed
    the files: they are fetched again, and a file only the first download had does not stay."""
    import mlflow

    from hyperrec.privacy.models import REDACTIONS_TAG
    from hyperrec.registry.model_registry import model_version_dir

    version, source, client = fake_version(settings, tmp_path, "old")
    (source / "model_dir" / "stale.txt").write_text("a file the redaction deletes")
    real, calls = mlflow.artifacts.download_artifacts, []

    def overlapped(*args, **kwargs):
        local = real(*args, **kwargs)
        calls.append(local)
        if len(calls) == 1:  # an erasure ran meanwhile: new files, a grown count
            (source / "model_dir" / "tower.txt").write_text("redacted")
            (source / "model_dir" / "stale.txt").unlink()
            client.set_model_version_tag(settings.model_name, str(version), REDACTIONS_TAG, "1")
        return local

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", overlapped)
    model_dir = model_version_dir(settings, version, tmp_path / "download", wait_s=0.1)
    assert len(calls) == 2
    assert (model_dir / "tower.txt").read_text() == "redacted" and not (model_dir / "stale.txt").exists()
