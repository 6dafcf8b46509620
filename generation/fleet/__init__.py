"""Which worker runs what: placement decisions (placement), the live workers in Redis (registry), the Celery
queues (queues), this worker process's lifecycle and routing (worker), and the overview for /healthz and the
admin (overview, views). Imports point down only: engine <- modelzoo <- fleet <- jobs <- web/API."""
