import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from speech_enhance.pipeline import store


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_tensor_columns_round_trip_through_parquet(dtype):
    rng = np.random.default_rng(0)
    tensors = rng.random((5, 257, 64)).astype(dtype)
    table = store.to_arrow({"mixture_id": np.arange(5), "noisy_mag": tensors})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    back = pq.read_table(io.BytesIO(buf.getvalue()))
    np.testing.assert_array_equal(store.decode_column(back, "noisy_mag"), tensors)
    np.testing.assert_array_equal(store.decode_column(back.slice(2, 2), "noisy_mag"), tensors[2:4])
    assert store.tensor_spec(back.schema.field("noisy_mag")) == ((257, 64), np.dtype(dtype))
    # what pandas users get: bytes per row, documented reshape
    frame = back.to_pandas()
    np.testing.assert_array_equal(np.frombuffer(frame.noisy_mag[3], dtype=dtype).reshape(257, 64), tensors[3])
    np.testing.assert_array_equal(store.decode_bytes(frame.noisy_mag.to_numpy(), (257, 64), dtype), tensors)


def test_missing_metadata_is_a_clear_error():
    import pyarrow as pa

    table = pa.table({"noisy_mag": pa.array([b"x" * 4], pa.binary(4))})
    with pytest.raises(ValueError, match="no tensor shape"):
        store.decode_column(table, "noisy_mag")
