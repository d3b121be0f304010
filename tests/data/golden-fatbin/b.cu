// Golden fat binary for tests/test_fatbin.py (see tests/data/README.md).
__global__ void add_b(float *a, float b) { a[threadIdx.x] += b; }
void launch_b(float *a) { add_b<<<1, 32>>>(a, 1.0f); }
