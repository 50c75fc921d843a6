; int8 GEMM: C[M, N] (i32) = A[M, K] (i8) @ B[K, N] (i8), tiled by hand and double-buffered.
;
; Tiling. C is built one TM x TN tile at a time in the accumulator. For each C tile, K is
; walked in steps of TK: a step DMAs the TM x TK tile of A and the TK x TN tile of B into
; the scratchpad, then runs (TK / ARRAY_ROWS) * (TN / ARRAY_COLS) load_weights/matmul
; pairs, each streaming TM rows of A through one ARRAY_ROWS x ARRAY_COLS tile of B and
; adding into C. After a C tile's last step the store engine writes it to DRAM.
; M, K and N must be multiples of TM, TK and TN; every tile size is an .equ, so a caller
; may override it with defines.
;
; Double buffering (DOUBLE_BUFFER = 1). Step t uses A/B slot t % 2 and C tile j uses
; accumulator slot j % 2, so the load engine fetches step t + 1 while the matrix unit
; works on step t and the store engine writes C tile j - 1. Each slot has its semaphores:
;   FREED + s   matrix -> load    the last matmul that reads A/B slot s has finished
;   LOADED + s  load -> matrix    A and B of slot s have arrived
;   CDONE + c   matrix -> store   C slot c holds a finished tile
;   CFREE + c   store -> matrix   C slot c has been written out
; FREED and CFREE start with one token per slot (the slots start empty).
;
; Serial (DOUBLE_BUFFER = 0). One slot of each; after a C tile's last step the store, not
; the matrix unit, frees the A/B slot. So every step waits for the previous one: load,
; matrix and store never overlap. Same instructions, for comparing cycles.
;
; "First / last iteration of 0 <= i < N" is computed as (N - i) // N and (i + 1) // N,
; which are 1 there and 0 elsewhere; a wait or signal multiplied by 0 is "none".

.equ M, 256
.equ K, 1024
.equ N, 512
.equ DOUBLE_BUFFER, 1

; Two C tiles fill the accumulator; two A and two B tiles fill at most half the scratchpad
; (TM <= TN), leaving room for a caller that overrides the sizes.
.equ TN, 4 * ARRAY_COLS
.equ TM, ACC_BYTES // (2 * 4 * TN)
.equ TK, SPAD_BYTES // (8 * TN)

.equ SERIAL, 1 - DOUBLE_BUFFER
.equ NBUF, 1 + DOUBLE_BUFFER
.equ MT, M // TM
.equ NT, N // TN
.equ KT, K // TK
.equ KR, TK // ARRAY_ROWS         ; weight tiles down one B tile
.equ NC, TN // ARRAY_COLS         ; weight tiles across one B tile

.if M % TM + K % TK + N % TN + (MT == 0) + (KT == 0) + (NT == 0)
  .error "M, K and N must be non-zero multiples of the tile sizes TM, TK and TN"
.endif

.equ A_TILE_BYTES, TM * TK
.equ B_TILE_BYTES, TK * TN
.equ C_TILE_BYTES, TM * TN * 4
.equ A_BUF, 0
.equ B_BUF, NBUF * A_TILE_BYTES

.equ A_DRAM, 0
.equ B_DRAM, M * K
.equ C_DRAM, M * K + K * N

.equ FREED, 1
.equ LOADED, 3
.equ CDONE, 5
.equ CFREE, 7

.input  A dram=A_DRAM shape=(M, K) dtype=i8
.input  B dram=B_DRAM shape=(K, N) dtype=i8
.output C dram=C_DRAM shape=(M, N) dtype=i32

.for s in 0..NBUF
  sync engine=load signal=FREED + s
  sync engine=store signal=DOUBLE_BUFFER * (CFREE + s)
.endfor

.for m in 0..MT
.for n in 0..NT
  .equ TILE, m * NT + n
  .equ CS, TILE % NBUF
  .equ C_SLOT, ACC_BASE + CS * C_TILE_BYTES
  sync engine=matrix wait=DOUBLE_BUFFER * (CFREE + CS)

  .for k in 0..KT
    .equ S, (TILE * KT + k) % NBUF
    .equ A_SLOT, A_BUF + S * A_TILE_BYTES
    .equ B_SLOT, B_BUF + S * B_TILE_BYTES
    .equ FIRST_K, (KT - k) // KT
    .equ LAST_K, (k + 1) // KT
    dma_load dram=A_DRAM + m * TM * K + k * TK local=A_SLOT n0=TK n1=TM ds1=K ls1=TK wait=FREED + S
    dma_load dram=B_DRAM + k * TK * N + n * TN local=B_SLOT n0=TN n1=TK ds1=N ls1=TN signal=LOADED + S

    .for kr in 0..KR
    .for nc in 0..NC
      .equ FIRST, (KR - kr) // KR * ((NC - nc) // NC)
      .equ LAST, (kr + 1) // KR * ((nc + 1) // NC)
      load_weights dtype=i8 addr=B_SLOT + kr * ARRAY_ROWS * TN + nc * ARRAY_COLS k=ARRAY_ROWS n=ARRAY_COLS stride=TN wait=FIRST * (LOADED + S)
      matmul dtype=i8 accumulate=1 - FIRST_K * ((KR - kr) // KR) a=A_SLOT + kr * ARRAY_ROWS a_rs=TK m=TM c=C_SLOT + nc * ARRAY_COLS * 4 c_rs=TN signal=LAST * (1 - SERIAL * LAST_K) * (FREED + S)
    .endfor
    .endfor
  .endfor

  sync engine=matrix signal=CDONE + CS
  dma_store esize=4 dram=C_DRAM + (m * TM * N + n * TN) * 4 local=C_SLOT n0=TN n1=TM ds1=N ls1=TN wait=CDONE + CS signal=DOUBLE_BUFFER * (CFREE + CS) + SERIAL * FREED
.endfor
.endfor
end
