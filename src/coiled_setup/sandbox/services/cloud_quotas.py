"""Cloud Quotas (google.api.cloudquotas.v1.CloudQuotas): Compute Engine's regional quotas and quota preferences.

QuotaInfo carries the limit per region (dimensions_infos: one per region that differs, and one without dimensions
for every other region); Google does not give usage here. A QuotaPreference asks for a value: granted at once up
to the project's `quota_grant_up_to`, else left `reconciling` (pending review) with the current value granted.
"""

from __future__ import annotations

import time

from google.cloud.cloudquotas_v1 import types as cq

from coiled_setup.sandbox import errors
from coiled_setup.sandbox.services.common import Ctx, page_start, parts, ts
from coiled_setup.sandbox.world import DEFAULT_GRANT_UP_TO, DEFAULT_QUOTAS, Project, _etag

PATH = "google.api.cloudquotas.v1.CloudQuotas"
CQ_SVC = "cloudquotas.googleapis.com"
COMPUTE = "compute.googleapis.com"
GET, UPDATE = "cloudquotas.quotas.get", "cloudquotas.quotas.update"
# quota id -> (metric, display name, unit)
KNOWN = {
    "CPUS-per-project-region": ("compute.googleapis.com/cpus", "CPUs per project per region", "1/{project}/{region}"),
    "SSD-TOTAL-GB-per-project-region": ("compute.googleapis.com/ssd_total_storage",
                                        "Persistent Disk SSD (GB) per project per region", "GBy/{project}/{region}"),
    "IN-USE-ADDRESSES-per-project-region": ("compute.googleapis.com/in_use_addresses",
                                            "In-use regional external IPv4 addresses per project per region",
                                            "1/{project}/{region}"),
}


def limit(p: Project, quota_id: str, region: str) -> int:
    per = p.quotas.get(quota_id, {})
    return int(per.get(region, per.get("", DEFAULT_QUOTAS[quota_id])))


def _location(ref_parts: list[str]) -> None:
    if ref_parts[1] != "global":
        raise errors.invalid_argument("Only the location 'global' is supported.", field="parent")


def _info(p: Project, quota_id: str) -> cq.QuotaInfo:
    metric, display, unit = KNOWN[quota_id]
    per = p.quotas.get(quota_id, {})
    infos = [cq.DimensionsInfo(dimensions={"region": r}, details=cq.QuotaDetails(value=int(v)),
                               applicable_locations=[r]) for r, v in sorted(per.items()) if r]
    infos.append(cq.DimensionsInfo(details=cq.QuotaDetails(value=limit(p, quota_id, ""))))
    return cq.QuotaInfo(
        name=f"projects/{p.number}/locations/global/services/{COMPUTE}/quotaInfos/{quota_id}",
        quota_id=quota_id, metric=metric, service=COMPUTE, is_precise=True,
        container_type=cq.QuotaInfo.ContainerType.PROJECT, dimensions=["region"], metric_display_name=display,
        quota_display_name=display, metric_unit=unit,
        quota_increase_eligibility=cq.QuotaIncreaseEligibility(is_eligible=True), dimensions_infos=infos,
    )


def _service(ctx: Ctx, name: str, permission: str) -> tuple[Project, str]:
    ref, loc, service = parts(name, "projects", "locations", "services")
    _location([ref, loc])
    p = ctx.project(ref, permission, name, CQ_SVC)
    if service != COMPUTE:
        raise errors.not_found(f"Service {service} has no quota info in this simulation.")
    return p, service


def get_quota_info(ctx: Ctx, req: cq.GetQuotaInfoRequest):
    base, _, quota_id = req.name.rpartition("/quotaInfos/")
    p, _ = _service(ctx, base, GET)
    if quota_id not in KNOWN:
        raise errors.not_found(f"QuotaInfo {req.name} not found.")
    return _info(p, quota_id)


def list_quota_infos(ctx: Ctx, req: cq.ListQuotaInfosRequest):
    p, _ = _service(ctx, req.parent, GET)
    ids = sorted(KNOWN)
    start = page_start(req.page_token)
    size = req.page_size or 100
    page = ids[start:start + size]
    nxt = str(start + size) if start + size < len(ids) else ""
    return cq.ListQuotaInfosResponse(quota_infos=[_info(p, q) for q in page], next_page_token=nxt)


def _proto(pref: dict) -> cq.QuotaPreference:
    cfg = cq.QuotaConfig(preferred_value=pref["preferred"], granted_value=pref["granted"],
                         trace_id=pref["trace_id"], state_detail=pref["state_detail"])
    return cq.QuotaPreference(
        name=pref["name"], dimensions={"region": pref["region"]} if pref["region"] else {}, quota_config=cfg,
        etag=_etag(pref["counter"], pref["name"]).hex(), create_time=ts(pref["created"]),
        update_time=ts(pref["updated"]), service=pref["service"], quota_id=pref["quota_id"],
        reconciling=pref["reconciling"], justification=pref["justification"], contact_email=pref["contact_email"],
    )


def _decide(p: Project, pref: dict) -> None:
    """Grants at once up to the project's threshold (or any decrease); else leaves it pending review."""
    current = limit(p, pref["quota_id"], pref["region"])
    wanted = pref["preferred"]
    if wanted <= current or wanted <= p.quota_grant_up_to.get(pref["quota_id"], DEFAULT_GRANT_UP_TO[pref["quota_id"]]):
        p.quotas.setdefault(pref["quota_id"], {})[pref["region"] or ""] = wanted
        pref.update(granted=wanted, reconciling=False, state_detail="")
    else:
        pref.update(granted=current, reconciling=True,
                    state_detail="The request is pending review by Google Cloud; you will be emailed.")


def _checked(p: Project, qp: cq.QuotaPreference) -> tuple[str, str, int]:
    if qp.service != COMPUTE or qp.quota_id not in KNOWN:
        raise errors.invalid_argument(f"Quota {qp.service}/{qp.quota_id} does not exist.", field="quota_id")
    region = dict(qp.dimensions).get("region", "")
    if set(dict(qp.dimensions)) - {"region"}:
        raise errors.invalid_argument("Only the dimension 'region' applies to this quota.", field="dimensions")
    value = int(qp.quota_config.preferred_value)
    if value < 0:
        raise errors.invalid_argument("preferred_value must be 0 or more.", field="quota_config.preferred_value")
    if value > limit(p, qp.quota_id, region) and not qp.contact_email:
        raise errors.invalid_argument("contact_email is required when requesting a quota increase.",
                                      field="contact_email")
    return qp.quota_id, region, value


def create_quota_preference(ctx: Ctx, req: cq.CreateQuotaPreferenceRequest):
    ref, loc = parts(req.parent, "projects", "locations")
    _location([ref, loc])
    p = ctx.project(ref, UPDATE, req.parent, CQ_SVC)
    qp = req.quota_preference
    pref_id = req.quota_preference_id or f"{qp.quota_id.lower()}-{int(time.time() * 1000) % 10**9}"
    name = f"projects/{p.number}/locations/global/quotaPreferences/{pref_id}"
    if name in p.quota_preferences:
        raise errors.already_exists(f"QuotaPreference {name} already exists.")
    quota_id, region, value = _checked(p, qp)
    now = time.time()
    pref = {"name": name, "service": COMPUTE, "quota_id": quota_id, "region": region, "preferred": value,
            "granted": 0, "reconciling": False, "state_detail": "", "contact_email": qp.contact_email,
            "justification": qp.justification, "counter": 0, "created": now, "updated": now,
            "trace_id": f"trace-{pref_id}"}
    _decide(p, pref)
    p.quota_preferences[name] = pref
    ctx.changed = True
    return _proto(pref)


def _preference(ctx: Ctx, name: str, permission: str) -> tuple[Project, dict | None]:
    ref, loc, _ = parts(name, "projects", "locations", "quotaPreferences")
    _location([ref, loc])
    p = ctx.project(ref, permission, name, CQ_SVC)
    return p, p.quota_preferences.get(f"projects/{p.number}/locations/global/quotaPreferences/{name.rsplit('/', 1)[1]}")


def get_quota_preference(ctx: Ctx, req: cq.GetQuotaPreferenceRequest):
    _, pref = _preference(ctx, req.name, GET)
    if pref is None:
        raise errors.not_found(f"QuotaPreference {req.name} not found.")
    return _proto(pref)


def list_quota_preferences(ctx: Ctx, req: cq.ListQuotaPreferencesRequest):
    ref, loc = parts(req.parent, "projects", "locations")
    _location([ref, loc])
    p = ctx.project(ref, GET, req.parent, CQ_SVC)
    prefs = sorted(p.quota_preferences.values(), key=lambda x: x["name"])
    start = page_start(req.page_token)
    size = req.page_size or 100
    nxt = str(start + size) if start + size < len(prefs) else ""
    return cq.ListQuotaPreferencesResponse(quota_preferences=[_proto(x) for x in prefs[start:start + size]],
                                           next_page_token=nxt)


def update_quota_preference(ctx: Ctx, req: cq.UpdateQuotaPreferenceRequest):
    qp = req.quota_preference
    p, pref = _preference(ctx, qp.name, UPDATE)
    if pref is None:
        if not req.allow_missing:
            raise errors.not_found(f"QuotaPreference {qp.name} not found.")
        return create_quota_preference(ctx, cq.CreateQuotaPreferenceRequest(
            parent=qp.name.rsplit("/quotaPreferences/", 1)[0], quota_preference_id=qp.name.rsplit("/", 1)[1],
            quota_preference=qp))
    if qp.etag and qp.etag != _etag(pref["counter"], pref["name"]).hex():
        raise errors.aborted(f"The etag of QuotaPreference {pref['name']} does not match: read it again.")
    if (qp.service, qp.quota_id, dict(qp.dimensions).get("region", "")) != (
            pref["service"], pref["quota_id"], pref["region"]):
        raise errors.invalid_argument("service, quota_id and dimensions of a quota preference cannot change.",
                                      field="quota_preference")
    _, _, value = _checked(p, qp)
    pref.update(preferred=value, contact_email=qp.contact_email or pref["contact_email"],
                justification=qp.justification or pref["justification"], counter=pref["counter"] + 1,
                updated=time.time())
    _decide(p, pref)
    ctx.changed = True
    return _proto(pref)


METHODS = [
    ("ListQuotaInfos", list_quota_infos, cq.ListQuotaInfosRequest, False),
    ("GetQuotaInfo", get_quota_info, cq.GetQuotaInfoRequest, False),
    ("ListQuotaPreferences", list_quota_preferences, cq.ListQuotaPreferencesRequest, False),
    ("GetQuotaPreference", get_quota_preference, cq.GetQuotaPreferenceRequest, False),
    ("CreateQuotaPreference", create_quota_preference, cq.CreateQuotaPreferenceRequest, True),
    ("UpdateQuotaPreference", update_quota_preference, cq.UpdateQuotaPreferenceRequest, True),
]
