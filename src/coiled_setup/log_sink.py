"""The one organization policy this tool may lift, and only when asked (--allow-log-sink-exception).

Coiled's backend makes a log sink for cluster logs while it builds its global infrastructure, and grants the sink's
writer identity (a Google-managed account, outside any organization) a role; domain restricted sharing
(iam.allowedPolicyMemberDomains) refuses that grant. Coiled's own `coiled setup gcp` sets allowAll on the project
for that moment and restores the project's policy afterwards. This does the same, narrowly: the project's own
policy for that constraint only, recorded in the journal before it changes, restored right after (deleted when the
project had none), and restored by the next run when a run dies in between.
"""

from __future__ import annotations

import contextlib

from coiled_setup.cloud import Aborted, CloudError
from coiled_setup.org_policies import DOMAINS

PENDING = "log_sink_exception"  # the journal's record of a lifted policy: {"original": policy JSON or None}
FLAG = "--allow-log-sink-exception"


def _ours(policy: dict | None) -> bool:
    """Whether the project's policy is still the exception this tool set (nobody changed it since)."""
    rules = ((policy or {}).get("spec") or {}).get("rules") or []
    return len(rules) == 1 and rules[0].get("allowAll") is True


def _rules(policy: dict | None):
    return None if policy is None else ((policy.get("spec") or {}).get("rules") or [])


def _exception(project: str) -> dict:
    return {"name": f"projects/{project}/policies/{DOMAINS}", "spec": {"rules": [{"allowAll": True}]}}


@contextlib.contextmanager
def lifted(run):
    """Domain restricted sharing lifted for the project while the body runs, then the project's policy restored.
    A refusal to lift it is told in one sentence and the body runs anyway (Coiled then makes no sink grant)."""
    g, project, journal, ui = run.google, run.opts.project, run.journal, run.ui
    try:
        original = g.project_org_policy(project, DOMAINS)
        # Recorded before the change: a run that dies before restoring leaves this for the next run.
        journal.set(**{PENDING: {"original": original}})
        put = _exception(project)
        if original is not None:
            put["etag"] = original.get("etag", "")
        g.put_project_org_policy(project, put, exists=original is not None)
    except CloudError as e:
        # Refused, nothing changed; but a lift whose answer was lost may have landed: restore() puts back what is
        # ours and clears the record (left for the next run when Google cannot be read now).
        with contextlib.suppress(CloudError):
            restore(g, project, journal, ui)
        ui.warn(f"Could not lift constraints/{DOMAINS} for project {project} ({e.code}: {e.message.rstrip('.')}), "
                "so Coiled's log sink gets no grant and cluster logs will not reach BigQuery.")
        yield
        return
    ui.info(f"Lifted constraints/{DOMAINS} for project {project} while Coiled sets up its log sink ({FLAG}).")
    try:
        yield
    finally:
        restore(g, project, journal, ui)


def restore(g, project: str, journal, ui) -> None:
    """Puts back the project's own policy recorded in the journal (a no-op when nothing is pending)."""
    pending = journal.get(PENDING)
    if not pending:
        return
    original = pending.get("original")
    current = g.project_org_policy(project, DOMAINS)
    if not _ours(current):
        journal.set(**{PENDING: None})
        if _rules(current) != _rules(original):  # someone changed it since: theirs stands
            ui.warn(f"The project policy of constraints/{DOMAINS} in {project} was changed by someone else after "
                    "this tool lifted it; it was left as it is now.")
        return  # else the lift never landed: nothing to restore
    try:
        if original is None:
            g.delete_project_org_policy(project, DOMAINS, current.get("etag", ""))
        else:
            g.put_project_org_policy(project, {**original, "etag": current.get("etag", "")}, exists=True)
    except Aborted:  # changed between the read and the write: theirs stands
        journal.set(**{PENDING: None})
        ui.warn(f"The project policy of constraints/{DOMAINS} in {project} changed while it was being restored; it "
                "was left as it is now.")
        return
    journal.set(**{PENDING: None})
    ui.info(f"Restored the project policy of constraints/{DOMAINS} in {project}"
            + (" (removed: the project had none)." if original is None else "."))
