"""Sessions composed with what sits above collection: the exporter and the doctor.

collect/ collects (one session per command, raw maps to model snapshots);
the modules here put those sessions together with the doctor's rules
(netpath/diagnose/) and the metric families (netpath/render/), so that no
collect module reaches up a layer.

- export.py: `netpath export`'s Prometheus collector over the drops and trace sessions;
- doctor.py: `netpath doctor`'s session, its query, and `doctor_session`, the one place it is built.
"""
