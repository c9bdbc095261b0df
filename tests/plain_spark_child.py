"""Score a Parquet table on a plain local Spark (no Ray) in a process of its own, as a user's job would.

``python tests/plain_spark_child.py MODEL_DIR INPUT OUTPUT [KEY=VALUE ...]`` builds a ``local[2]``
SparkSession with the given settings and writes ``score(df, MODEL_DIR)`` to OUTPUT; run it with
``spark-submit`` to have Spark's launcher read settings such as ``spark.pyspark.python``. Each test
gets a fresh Spark application, so the interpreter its Python workers run is the one the test chose
(a process can hold one SparkContext, and its ``pythonExec`` is fixed when it starts). A hybrid
error is printed as its one line on stdout, exit status 3.
"""

from __future__ import annotations

import sys

EXIT_HYBRID_ERROR = 3


def main(argv: list[str]) -> int:
    from hybrid.errors import HybridError
    from hybrid.score import score
    from hybrid.testing import local_spark_builder

    model_dir, input_path, output_path, *settings = argv
    builder = local_spark_builder("hybrid-test-plain-spark")
    for setting in settings:
        key, value = setting.split("=", 1)
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        score(spark.read.parquet(input_path).repartition(2), model_dir, batch_size=16).write.parquet(output_path)
    except HybridError as err:
        print(err)  # on stdout: under spark-submit, Spark's own log lines go to stderr, after it too
        return EXIT_HYBRID_ERROR
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
