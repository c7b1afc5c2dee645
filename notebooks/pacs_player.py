"""Play a PACS workstation in a FHIRcast session, for notebook 04.

Like a radiologist working through a worklist, it opens the most recent studies of a FHIR
server one after another: ``Patient-open`` then ``ImagingStudy-open`` for each (FHIRcast
3.0.0 ``3-3-1``, ``3-5-1``). Then it waits for the notebook to select a study, follows that
selection (every event is acknowledged with 200, ``2-5``), closes it and leaves the session
(``ImagingStudy-close``, ``Patient-close``, unsubscribe). Every wait is bounded.

Run it from a terminal::

    python notebooks/pacs_player.py --hub http://127.0.0.1:8042/fhircast \\
        --topic my-topic --fhir http://127.0.0.1:8042/fhir

or from a notebook with :class:`PacsProcess`, which starts it as a subprocess and
shows what it prints. A hub that needs a bearer token (the one inside Jupyter, at
``{base_url}imagingkit/fhircast``) gets ``--token`` or ``$PACS_PLAYER_TOKEN`` (which keeps
it off the command line, where other local users could read it); the token goes to the
hub's origin only, and to the FHIR server only when that is the same origin.

Exit status: 0 after following a selection, 1 when none came, 2 when the hub or the FHIR
server could not be used.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from imagingkit.auth import AuthMap, BearerToken
from imagingkit.errors import ImagingKitError
from imagingkit.fhircast import FhircastClient
from imagingkit.fhircast.protocol import Event, accession_number, study_instance_uid

PATIENT_ELEMENTS = ("resourceType", "id", "identifier", "name", "gender", "birthDate")
STUDY_ELEMENTS = ("resourceType", "id", "identifier", "status", "subject", "started", "description")


def say(text: str) -> None:
    print(f"PACS: {text}", flush=True)


def keep(resource: dict[str, Any], elements: tuple[str, ...]) -> dict[str, Any]:
    """The elements a FHIRcast event needs (not the series and instances)."""
    return {k: resource[k] for k in elements if k in resource}


TOKEN_VARIABLE = "PACS_PLAYER_TOKEN"


def worklist(
    fhir: str, count: int, auth: AuthMap | None = None, timeout: float = 30
) -> list[tuple[dict, dict]]:
    """The *count* most recent ImagingStudies and their Patients (FHIR R4 search).

    ``GET [base]/ImagingStudy?_sort=-started&_count=N&_include=ImagingStudy:subject``.
    """
    session = requests.Session()
    session.trust_env = urlsplit(fhir).hostname not in ("127.0.0.1", "localhost", "::1")
    answer = session.get(
        f"{fhir.rstrip('/')}/ImagingStudy",
        params={"_sort": "-started", "_count": count, "_include": "ImagingStudy:subject"},
        headers={"Accept": "application/fhir+json", **(auth.headers_for(fhir) if auth else {})},
        timeout=timeout,
    )
    answer.raise_for_status()
    entries = [e["resource"] for e in answer.json().get("entry", [])]
    patients = {f"Patient/{r['id']}": r for r in entries if r["resourceType"] == "Patient"}
    pairs = []
    for study in entries:
        patient = patients.get(study.get("subject", {}).get("reference", ""))
        if study["resourceType"] == "ImagingStudy" and patient is not None:
            pairs.append((keep(patient, PATIENT_ELEMENTS), keep(study, STUDY_ELEMENTS)))
    return pairs[:count]


def describe(study: dict[str, Any]) -> str:
    return (
        f"{study.get('description') or 'ImagingStudy/' + study['id']} "
        f"(UID {study_instance_uid(study)}, accession {accession_number(study) or '-'})"
    )


def play(args: argparse.Namespace) -> int:
    auth = AuthMap()
    if args.token:  # bound to the hub's origin (DESIGN.md D7)
        auth.add(args.hub, BearerToken(args.token, name="fhircast-hub"))
    pairs = worklist(args.fhir, args.studies, auth)
    if not pairs:
        say(f"no ImagingStudy with a Patient on {args.fhir}")
        return 2
    say(f"worklist of {len(pairs)} studies from {args.fhir}")
    hub = FhircastClient(args.hub, args.topic, subscriber_name="pacs-player", token=args.token)
    with hub as pacs:
        for patient, study in pairs:
            pacs.wait_for(pacs.open_patient(patient).id, timeout=args.timeout)
            sent = pacs.open_study(study, patient)
            pacs.wait_for(sent.id, timeout=args.timeout)  # the hub's echo: it was broadcast
            say(f"opened Patient/{patient['id']}: {describe(study)}")
            time.sleep(args.pause)
        start = pacs.mark()
        say(f"waiting up to {args.wait:g} s for the notebook's selection")

        def from_the_notebook(event: Event) -> bool:
            return event.key == "imagingstudy-open" and not pacs.is_own(event)

        try:
            chosen = pacs.wait_for(from_the_notebook, timeout=args.wait, after=start)
        except ImagingKitError:
            say("no selection came; leaving the session")
            return 1
        study, patient = chosen.value("study"), chosen.value("patient")
        owner = f"Patient/{patient['id']}" if patient else "no patient"
        say(f"received the notebook's selection: {describe(study)} of {owner}")
        say("acknowledged it (200) and now shows that study")
        if args.close:
            time.sleep(args.pause)
            pacs.wait_for(pacs.close_study(study, patient).id, timeout=args.timeout)
            if patient:
                pacs.wait_for(pacs.close_patient(patient).id, timeout=args.timeout)
            say(f"closed ImagingStudy/{study['id']} and {owner}")
    say("done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub", required=True, help="FHIRcast hub.url")
    parser.add_argument("--topic", required=True, help="FHIRcast hub.topic")
    parser.add_argument("--fhir", required=True, help="FHIR R4 base URL of the worklist")
    parser.add_argument("--studies", type=int, default=3, help="studies to open (default 3)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between events")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for a selection")
    parser.add_argument("--timeout", type=float, default=10, help="seconds per hub echo")
    parser.add_argument("--no-close", dest="close", action="store_false", help="leave it open")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE) or None,
        help=f"bearer token of the hub (default: ${TOKEN_VARIABLE})",
    )
    args = parser.parse_args(argv)
    # SIGTERM (PacsProcess.stop, CI) leaves through the with-block: unsubscribe, close 1000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return play(args)
    except (ImagingKitError, requests.RequestException) as error:
        say(f"stopped: {error}")
        return 2


class PacsProcess:
    """This script as a subprocess of a notebook, with bounded waits on what it prints.

    Examples
    --------
    >>> pacs = PacsProcess.start(hub=hub_url, topic=topic, fhir=fhir_url)  # doctest: +SKIP
    >>> pacs.expect("waiting", timeout=120)      # print its lines up to that one
    >>> pacs.finish(timeout=60)                  # the rest, and its exit status
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def start(
        cls, *, hub: str, topic: str, fhir: str, token: str | None = None, **options: Any
    ) -> PacsProcess:
        """Run ``python pacs_player.py --hub … --topic … --fhir …`` (options as flags).

        *token* (the hub's bearer token, or None) is passed in the player's environment,
        not on its command line.
        """
        command = [sys.executable, str(Path(__file__).resolve())]
        command += ["--hub", hub, "--topic", topic, "--fhir", fhir]
        for name, value in options.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
        if token:
            env[TOKEN_VARIABLE] = token
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        return cls(process)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _next(self, deadline: float) -> str | None:
        line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
        if line is not None:
            self.lines.append(line)
            print(line, flush=True)
        return line

    def expect(self, text: str, timeout: float = 60) -> None:
        """Print the player's lines until one contains *text* (kept in :attr:`lines`).

        Raises
        ------
        TimeoutError
            No such line within *timeout* seconds, or the player exited first.
        """
        deadline = time.monotonic() + timeout
        try:
            while (line := self._next(deadline)) is not None:
                if text in line:
                    return
        except queue.Empty:
            raise TimeoutError(f"the PACS player printed no {text!r} in {timeout:g} s") from None
        self._queue.put(None)  # keep the end mark for finish()
        raise TimeoutError(f"the PACS player exited ({self.process.wait()}) before {text!r}")

    def finish(self, timeout: float = 60) -> int:
        """Print the remaining lines, wait for the exit (stop it after *timeout*)."""
        deadline = time.monotonic() + timeout
        try:
            while self._next(deadline) is not None:
                pass
            return self.process.wait(max(0.01, deadline - time.monotonic()))
        except (queue.Empty, subprocess.TimeoutExpired):
            return self.stop()

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM (it unsubscribes), then SIGKILL after *timeout*; return the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout)


if __name__ == "__main__":
    sys.exit(main())
