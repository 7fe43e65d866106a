/** node --import tsx --conditions=@qlora/source bench/make-checkpoint.ts <dir> <1b|300m> */
import { ONE_B, THREE_HUNDRED_M, writeBenchCheckpoint } from "./checkpoint";

const [dir, which] = process.argv.slice(2);
const r = await writeBenchCheckpoint(dir, which === "300m" ? THREE_HUNDRED_M : ONE_B);
console.log(JSON.stringify(r));
