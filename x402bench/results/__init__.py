"""The shared results package: one schema for live (Locust) and simulated (SimPy) runs.

records (the contract with traffic) -> metrics/economics/stats -> summary (+ slo) -> rundir
(writes the folder; plots and report draw it) -> compare. It imports neither the live world
(services), nor loadtest, nor sim, so either mode and the CLI can use it alone.
"""
