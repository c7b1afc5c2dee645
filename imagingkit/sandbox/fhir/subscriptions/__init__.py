"""FHIR Subscriptions of the embedded FHIR R4 store (R4 subscription.html, Subscriptions
Backport IG STU1.1: channels, notifications, errors, operations).

Two kinds of ``Subscription`` are accepted by POST/PUT (and Bundles, and the in-process
API) and kept as ordinary stored resources:

- **R4 legacy, criteria-based**: ``criteria`` is a search (``ImagingStudy?patient=Patient/p1``)
  of any served type; channels ``websocket`` (``bind <id>`` → ``bound <id>``, then
  ``ping <id>`` per match) and ``rest-hook`` (POST per match: no body, or the resource when
  ``channel.payload`` is set). Active at once.
- **Backport topic-based** (``meta.profile`` ``backport-subscription``): ``criteria`` is a
  topic canonical, ``_criteria.extension[backport-filter-criteria]`` filters with search
  parameters of the topic's type; ``channel.extension[backport-heartbeat-period]``,
  ``[backport-timeout]``; ``channel._payload.extension[backport-payload-content]``
  (``empty | id-only | full-resource``). Notifications are R4 Backport Bundles
  (:mod:`.notifications`); rest-hooks handshake before ``active``.

Topic discovery
---------------
The store defines one topic, :data:`imagingkit.subscriptions.topics.IMAGINGSTUDY_TOPIC`
("ImagingStudy created or updated": every create or update of an ImagingStudy by any
write path, STOW-RS → FHIR sync included). It is listed in the CapabilityStatement:
``rest[0].resource[type=Subscription].extension[url=http://hl7.org/fhir/uv/
subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical]
.valueCanonical`` (one per topic), and ``CapabilityStatement.instantiates`` names the
Backport IG's ``backport-subscription-server-r4``. An unknown topic is refused with 400
listing the known ones. (R4 has no SubscriptionTopic resource; this store serves no
``Basic`` topics.)

Wire details
------------
- Websocket: ``{fhir base}/$subscription-ws`` (``ws://…``), advertised by the extension
  ``http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket`` (valueUrl) on
  ``CapabilityStatement.rest[0]`` and returned as ``websocket-url`` by
  ``$get-ws-binding-token``. Protocol: :mod:`.channels.websocket`.
- Operations: ``$status`` (type and instance), ``$events`` (instance; at most 100 events
  per answer), ``$get-ws-binding-token`` (type and instance; tokens live 300 s):
  :mod:`.operations`.
- Event numbers: per Subscription from 1, durable (:mod:`.events`), counted even when a
  delivery fails; ``events-since-subscription-start`` of a websocket handshake is the
  current count, so a client sees at once what it missed.

Modules: :mod:`.model` (checks), :mod:`.matching`, :mod:`.events`, :mod:`.notifications`,
:mod:`.tokens`, :mod:`.channels`, :mod:`.operations`, :mod:`.service` (lifecycle and
dispatch), :mod:`.routes`, :mod:`.definitions` (canonicals and limits).
"""
