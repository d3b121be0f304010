// Golden fat binary for tests/test_fatbin.py (see tests/data/README.md).
__global__ void add_a(float *a, float b) { a[threadIdx.x] += b; }
void launch_a(float *a) { add_a<<<1, 32>>>(a, 1.0f); }
