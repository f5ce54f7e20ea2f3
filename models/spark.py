"""The Spark session the batch stages run on when CTR_ENGINE=spark.

One session per process, built from the settings: the master (CTR_SPARK_MASTER: local[N] inside
this machine, spark://host:7077 a standalone cluster, k8s://... Kubernetes) and the settings of
CTR_SPARK_CONF, over the defaults below. Spark's own spark-defaults.conf (SPARK_CONF_DIR) applies
beneath both.

The defaults are those every job here depends on: session time in UTC (the feature definitions
compare and convert timestamps in UTC), Parquet timestamps written as microseconds (what DuckDB,
pyarrow and Feast read; Spark's default INT96 is deprecated), and the Python workers run by this
interpreter, which has the project installed. On a cluster whose executors have the project in
another interpreter, set spark.pyspark.python in CTR_SPARK_CONF.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from models.settings import Settings

# Spark settings the jobs rely on; CTR_SPARK_CONF may override each.
REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
# Sensible for a job on one machine (local[N]); a cluster sets its own.
LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Spark's 200 shuffle partitions cost more in task overhead than a few cores gain from them.
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
}


def spark_conf(settings: Settings) -> dict[str, str]:
    """The Spark settings a session of `settings` gets: the defaults, then CTR_SPARK_CONF's."""
    conf = {**REQUIRED_CONF, "spark.pyspark.python": sys.executable}
    if settings.spark_master.startswith("local"):
        conf.update(LOCAL_CONF)
    conf.update(dict(settings.spark_conf))
    return conf


def session(settings: Settings) -> SparkSession:
    """This process's Spark session, started on first use (a few seconds: the JVM starts).

    A session already running in the process is reused, with the required settings checked: Spark
    keeps a running session's static settings whatever a later builder asks."""
    from pyspark.sql import SparkSession

    conf = spark_conf(settings)
    # PySpark picks its workers' interpreter from this variable, before the setting
    os.environ.setdefault("PYSPARK_PYTHON", conf["spark.pyspark.python"])
    builder = SparkSession.builder.master(settings.spark_master).appName("realtime-ctr")
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    for key in REQUIRED_CONF:
        if spark.conf.get(key) != conf[key]:
            spark.conf.set(key, conf[key])
    return spark
