"""
A master and N worker processes sharing the TLS listener (``workers: N``).

The master (``twistd kongacme``) keeps everything but the TLS listener: the
configuration, ACME orders, renewal, storage, fleet propagation, port 80 and
the Admin API. It opens the TLS listening sockets and hands them to the
workers; each worker accepts on them, terminates TLS and proxies, with its
own certificate cache kept in step over an AMP channel.

- :mod:`kongacme.workers.channel`: the AMP commands between them.
- :mod:`kongacme.workers.worker`: a worker process's entry point.
- :mod:`kongacme.workers.supervisor`: starting, replacing and draining
  workers.
- :mod:`kongacme.workers.master`: the master's side of the channel and its
  wiring into :class:`kongacme.service.DaemonService`.
- :mod:`kongacme.workers.logrelay`: a worker's log events, written as lines
  the master logs again.
"""
