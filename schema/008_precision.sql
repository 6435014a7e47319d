-- 008_precision.sql - what each generation's products ran in: precision 'fp32' (exact, the
-- default) or 'bf16' (--precision bf16 on a CPU with AMX or AVX512_BF16), and the
-- instruction set ('avx512', 'avx2', 'portable', 'amx', 'avx512bf16'; a GPU backend's
-- name).  Every generation recorded before this version ran in fp32; its instruction set
-- was not recorded.
ALTER TABLE generations ADD COLUMN precision TEXT NOT NULL DEFAULT 'fp32';
ALTER TABLE generations ADD COLUMN isa TEXT;
