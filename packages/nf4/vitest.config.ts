import { packageConfig } from "../../vitest.shared.ts";

export default packageConfig("nf4");
