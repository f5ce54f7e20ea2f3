"""Running the system: deployment of the ranker, process control, the Airflow wiring constants."""
