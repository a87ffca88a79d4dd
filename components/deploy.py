from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(home: str, version: int, blessed: bool, endpoint: str = "", timeout_s: int = 120) -> str:
    """After register: a blessed version already moved `champion`, which the servers follow
    and hot-swap to. With an endpoint, wait until it answers with this version (the step
    fails after `timeout_s` otherwise); empty endpoint: nothing to verify. Rejected ->
    skipped. Returns the status, also tagged on the model version in MLflow."""
    import json

    from hyperrec.config import load_settings
    from hyperrec.registry.deploy import deploy as verify

    settings = load_settings(home)
    out = verify(settings, settings.model_name, version, blessed, endpoint or None, timeout_s=timeout_s)
    print(json.dumps(out))
    return out["status"]
